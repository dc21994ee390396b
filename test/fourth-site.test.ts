import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AdverseEvent, Bundle, Patient, Procedure, ResearchSubject } from '@medplum/fhirtypes';
import { mapExport } from '../src/bundle/map-export.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { baseMappingDir } from './support/mapping-dir.ts';

/**
 * A fourth hospital, onboarded by configuration alone: an NDJSON event feed with its own field names, codes,
 * US-style dates and local times. The test writes only a mapping file and data — no TypeScript for the site.
 */
const SITE_D_MAPPING = `extends: ldccrt-hcc-base.yaml
site: site-d
version: 0.1.0
source:
  format: ndjson
  files: [{ match: "events-*.ndjson" }]
  subject: patientRef
  recordType: kind.upper()
  recordKey: eventId
  enrolment: CONSENT
dates:
  formats: [MM/dd/yyyy, "MM/dd/yyyy HH:mm"]
  timezone: America/Chicago
valueMaps:
  site-d-ae:
    system: https://www.meddra.org
    map:
      diarrhea: { code: "10012735", display: Diarrhoea }
      hand-foot: { code: "10054524", display: Palmar-plantar erythrodysaesthesia syndrome }
resources:
  research-study: { from: CONSENT }
  patient:
    from: CONSENT
    let:
      gender: { $map: sex, value: gender, as: code }
      birthDate: { $date: dob, type: date }
      deathDate: { $date: "%subject.DIED.at.first()" }
  condition:
    from: CONSENT
    let:
      diagnosisDate: { $date: diagnosedAt }
      portalVeinInvasion: { $map: portal-vein-invasion, value: "'Vp' + pvt" }
  research-subject:
    from: CONSENT
    let:
      enrolmentDate: { $date: at }
      deathDate: { $date: "%subject.DIED.at.first()" }
      lastDate: { $first: [{ $date: "%subject.DIED.at.first()" }, { $date: "%subject.SEEN.at.last()" }] }
  port: { disabled: true }
  haic: { disabled: true }
  sorafenib: { disabled: true }
  surgery: { disabled: true }
  tumour-response: { disabled: true }
  radiotherapy:
    from: RADIATION
    let:
      start: { $date: at }
      end: { $date: until }
      doseValue: { $expr: gray, as: decimal, required: true }
      doseUnit: Gy
      fractions: { $expr: fx, as: unsignedInt }
  adverse-event:
    from: TOXICITY
    let:
      event: { $map: site-d-ae, value: term.lower() }
      verbatim: { $expr: term }
      grade: { $map: ctcae-grade, value: ctcae }
      seriousness: { $map: seriousness, value: "iif(sae = 'true', 'Y', 'N')" }
      start: { $date: at }
      outcome: { $map: ae-outcome, value: "'RECOVERING'" }
`;

const EVENTS = [
  { eventId: 'e1', patientRef: 'D-1', kind: 'consent', at: '04/01/2015 09:30', gender: 'F', dob: '07/14/1951', diagnosedAt: '03/02/2015', pvt: '4' },
  { eventId: 'e2', patientRef: 'D-1', kind: 'radiation', at: '04/06/2015', until: '05/08/2015', gray: '59.4', fx: '22' },
  { eventId: 'e3', patientRef: 'D-1', kind: 'toxicity', at: '04/20/2015', term: 'Diarrhea', ctcae: '2', sae: 'false' },
  { eventId: 'e4', patientRef: 'D-1', kind: 'toxicity', at: '04/31/2015', term: 'Hand-Foot', ctcae: '1', sae: 'false' },
  { eventId: 'e5', patientRef: 'D-1', kind: 'seen', at: '01/10/2017' },
];

describe('a fourth site onboarded by a mapping file alone', () => {
  it('maps a differently shaped export (NDJSON, US dates, local times) into valid bundles and rejects the bad row', async () => {
    const dir = await baseMappingDir('site-d-');
    await writeFile(join(dir, 'site-d.yaml'), SITE_D_MAPPING);
    await writeFile(join(dir, 'events-2017.ndjson'), EVENTS.map((e) => JSON.stringify(e)).join('\n') + '\n');

    const mapping = await compileMapping(await loadMapping(join(dir, 'site-d.yaml')));
    const mapped = await mapExport(mapping, [dir], { recorded: '2017-02-01T00:00:00Z' });

    expect(mapped.summary.rejects).toEqual([
      expect.objectContaining({ file: 'events-2017.ndjson', row: 4, key: 'e4', field: 'at', value: '04/31/2015', reason: 'impossible date (MM/dd/yyyy): the day is past the end of the month (April has 30 days)' }),
    ]);
    expect(mapped.summary.resourcesByType).toEqual({ AdverseEvent: 1, Condition: 1, Patient: 1, Procedure: 1, Provenance: 1, ResearchStudy: 1, ResearchSubject: 1 });
    const resources = (mapped.bundles[0].bundle as Bundle).entry!.map((e) => e.resource!);
    const patient = resources.find((r): r is Patient => r.resourceType === 'Patient')!;
    expect(patient).toMatchObject({ gender: 'female', birthDate: '1951-07-14' });
    const subject = resources.find((r): r is ResearchSubject => r.resourceType === 'ResearchSubject')!;
    expect(subject.period).toEqual({ start: '2015-04-01T09:30:00-05:00', end: '2017-01-10' });
    const rt = resources.find((r): r is Procedure => r.resourceType === 'Procedure')!;
    expect(rt.extension?.[0].extension?.[0]).toEqual({ url: 'totalDoseDelivered', valueQuantity: { value: 5940, unit: 'cGy', system: 'http://unitsofmeasure.org', code: 'cGy' } });
    const ae = resources.find((r): r is AdverseEvent => r.resourceType === 'AdverseEvent')!;
    expect(ae.event?.coding?.[0].code).toBe('10012735');
    expect(ae.identifier).toEqual({ use: 'official', system: 'urn:trialbridge:ldccrt-hcc-p2:site-d:adverse-event', value: 'e3' });
  });
});
