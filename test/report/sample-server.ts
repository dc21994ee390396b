/** An embedded FHIR server holding the three sample sites, delivered as the demo does. */
import { mapExport } from '../../src/bundle/map-export.ts';
import { SAMPLE_SITES } from '../../src/cli/demo.ts';
import { FhirClient } from '../../src/delivery/client.ts';
import { deliverBundle } from '../../src/delivery/deliver.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from '../../src/delivery/embedded-server.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import type { Patient } from '@medplum/fhirtypes';

export const STUDY = 'LDCCRT-HCC-P2';

/** Lines of the terminal summary that carry the trial's published results. */
export const PUBLISHED_SUMMARY = [
  `Study ${STUDY}: 47 subjects at 3 sites (site-a 18, site-b 15, site-c 14)`,
  'objective response (mRECIST CR+PR): 4 weeks after LD-CCRT 21/47 (44.7%);',
  'best 25/47 (53.2%)',
  'conversion to resection or transplant 9/47 (19.1%)',
  'Diarrhoea 17/47 (36.2%)',
  'Palmar-plantar erythrodysaesthesia syndrome 16/47 (34.0%)',
  'median radiotherapy dose 60 Gy',
  'median OS 24.6 (95% CI 17.0–43.8) months; PFS 6.8 (95% CI 5.0–16.4) months',
  'portal vein invasion Vp3/Vp4 (n=17): median OS 13.0 (95% CI 6.1–35.8), PFS 5.6 (95% CI 2.2–16.5) months',
];

export interface SampleServer {
  readonly server: EmbeddedFhirServer;
  readonly client: FhirClient;
  /** the subjects' Patient identifier values and birth dates, to check that no report shows them */
  readonly identifying: string[];
  /** those of them found in a text, as words or JSON strings */
  leakedInto(text: string): string[];
}

export async function startSampleServer(options: EmbeddedFhirServerOptions & { token?: string } = {}): Promise<SampleServer> {
  const server = await startEmbeddedFhirServer(options);
  const client = new FhirClient({ baseUrl: server.baseUrl, ...(options.token ? { headers: { authorization: `Bearer ${options.token}` } } : {}) });
  const identifying: string[] = [];
  try {
    for (const site of SAMPLE_SITES) {
      const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z' });
      for (const { bundle } of mapped.bundles) {
        const result = await deliverBundle(client, bundle);
        if (result.outcome !== 'delivered') throw new Error(`sample bundle rejected: ${result.rejection?.message}`);
        for (const entry of bundle.entry ?? []) {
          if (entry.resource?.resourceType !== 'Patient') continue;
          const patient = entry.resource as Patient;
          identifying.push(...(patient.identifier ?? []).map((i) => i.value ?? ''), patient.birthDate ?? '');
        }
      }
    }
  } catch (err) {
    await server.close();
    throw err;
  }
  const values = identifying.filter((v) => v !== '');
  return {
    server,
    client,
    identifying: values,
    leakedInto(text) {
      const words = new Set(text.split(/[^A-Za-z0-9-]+/));
      // numeric subject ids (site-b's) cannot be told from counts in a report: the others must not appear
      return values.filter((v) => !/^\d+$/.test(v) && (words.has(v) || text.includes(`"${v}"`)));
    },
  };
}
