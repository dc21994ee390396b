/**
 * Search values escaped: a crafted business key cannot match, and so cannot overwrite, another site's or
 * another system's resource, against the embedded server (@medplum/fhir-router), in transaction and in
 * individual-update mode.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapExport } from '../bundle/map-export.ts';
import { compileMapping } from './compile.ts';
import { loadMapping } from './load.ts';
import type { AdverseEvent, Bundle, Patient } from '@medplum/fhirtypes';
import { FhirClient } from '../delivery/client.ts';
import { deliverBundle } from '../delivery/deliver.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../delivery/embedded-server.ts';
import { checkBusinessKey, conditionalUrl, escapeSearchValue, InvalidBusinessKeyError, tokenSearchParam } from './identity.ts';

const SITE_A = 'urn:trialbridge:ldccrt-hcc-p2:site-a:patient';
const SITE_B = 'urn:trialbridge:ldccrt-hcc-p2:site-b:patient';
const HOSPITAL = 'urn:oid:1.2.3.4.5';
const AE_B = 'urn:trialbridge:ldccrt-hcc-p2:site-b:adverse-event';

let server: EmbeddedFhirServer;
let client: FhirClient;

function patient(system: string, value: string, birthDate: string): Patient {
  return { resourceType: 'Patient', meta: { tag: [{ system, code: value }] }, identifier: [{ system, value }], birthDate };
}

function adverseEvent(system: string, value: string, date: string): AdverseEvent {
  return { resourceType: 'AdverseEvent', meta: { tag: [{ system, code: value }] }, identifier: { system, value }, actuality: 'actual', subject: { reference: 'Patient/x' }, date };
}

function bundleOf(resource: Patient | AdverseEvent, system: string, value: string): Bundle {
  return { resourceType: 'Bundle', type: 'transaction', entry: [{ fullUrl: `urn:uuid:00000000-0000-4000-8000-${String(Math.floor(Math.random() * 1e12)).padStart(12, '0')}`, resource, request: { method: 'PUT', url: conditionalUrl(resource.resourceType, system, value) } }] };
}

async function deliver(resource: Patient | AdverseEvent, system: string, value: string, transactions: boolean): Promise<void> {
  const result = await deliverBundle(client, bundleOf(resource, system, value), { transactions, retry: { maxAttempts: 1 } });
  expect(result.rejection?.message).toBeUndefined();
}

/** The victims' resources as stored: version and content. */
async function victims(): Promise<string[]> {
  const out: string[] = [];
  for (const [type, search] of [
    ['Patient', `identifier=${tokenSearchParam(SITE_B, '101')}`],
    ['Patient', `identifier=${tokenSearchParam(HOSPITAL, '101')}`],
    ['Patient', `identifier=${tokenSearchParam(SITE_A, 'Z9')}`],
    ['AdverseEvent', `_tag=${tokenSearchParam(AE_B, '7')}`],
  ]) {
    const found = (await client.get<Bundle>(`${type}?${search}`)).body!.entry!.map((e) => e.resource as Patient | AdverseEvent);
    expect(found).toHaveLength(1);
    const r = found[0];
    out.push(`${r.id}/${r.meta?.versionId}/${'birthDate' in r ? r.birthDate : (r as AdverseEvent).date}`);
  }
  return out;
}

beforeAll(async () => {
  server = await startEmbeddedFhirServer();
  client = new FhirClient({ baseUrl: server.baseUrl });
  await deliver(patient(SITE_B, '101', '1950-01-01'), SITE_B, '101', true);
  await deliver(patient(HOSPITAL, '101', '1960-02-02'), HOSPITAL, '101', true);
  await deliver(patient(SITE_A, 'Z9', '1970-03-03'), SITE_A, 'Z9', true);
  await deliver(adverseEvent(AE_B, '7', '2020-01-01'), AE_B, '7', true);
});

afterAll(async () => {
  await server?.close();
});

describe('escapeSearchValue / conditionalUrl', () => {
  it('escapes \\ , | $ and percent-encodes system and value, keeping the separating |', () => {
    expect(escapeSearchValue('a\\b,c|d$e')).toBe('a\\\\b\\,c\\|d\\$e');
    expect(conditionalUrl('Patient', 'urn:x', 'Z9,1$2\\')).toBe(`Patient?identifier=urn%3Ax|${encodeURIComponent('Z9\\,1\\$2\\\\')}`);
    expect(conditionalUrl('AdverseEvent', 'urn:x,y', '7')).toBe(`AdverseEvent?_tag=${encodeURIComponent('urn:x\\,y')}|7`);
  });

  it('refuses control characters and | in systems and keys, naming the part, never the value', () => {
    for (const [system, value] of [
      [SITE_A, 'Z9\n'],
      [SITE_A, 'Z9\u0000'],
      [`${SITE_A}\t`, 'Z9'],
      [SITE_A, `Z9,${SITE_B}|101`],
      [`${SITE_B}|101,urn:x`, 'Z9'],
      [SITE_A, ''],
    ]) {
      expect(() => conditionalUrl('Patient', system, value)).toThrow(InvalidBusinessKeyError);
    }
    expect(() => checkBusinessKey('Patient', SITE_A, 'secret-key|1')).toThrow(/^Patient: the business key holds '\|'/);
    expect(() => checkBusinessKey('Patient', SITE_A, 'secret-key|1')).not.toThrow(/secret-key/);
  });
});

describe('crafted keys against the embedded server', () => {
  it('unescaped, a comma in a key would overwrite another site\'s Patient (what the escaping prevents)', async () => {
    // The URL as trialbridge built it before: values percent-encoded only. `,` is OR, and a bare value matches any system.
    const scratch = await startEmbeddedFhirServer();
    try {
      const raw = new FhirClient({ baseUrl: scratch.baseUrl });
      await raw.put(`Patient?identifier=${encodeURIComponent(SITE_B)}|101`, patient(SITE_B, '101', '1950-01-01'));
      await raw.put(`Patient?identifier=${encodeURIComponent(SITE_A)}|${encodeURIComponent('Z9,101')}`, patient(SITE_A, 'Z9,101', '1999-09-09'));
      const b = (await raw.get<Bundle>(`Patient?identifier=${encodeURIComponent(SITE_B)}|101`)).body!.entry ?? [];
      expect(b.map((e) => (e.resource as Patient).birthDate)).toEqual([]);
    } finally {
      await scratch.close();
    }
  });

  for (const transactions of [true, false]) {
    it(`leaves every other site's and system's resource untouched (${transactions ? 'transaction' : 'individual updates'})`, async () => {
      const before = await victims();
      const crafted = [
        'Z9,101',
        'Z9\\,101',
        `101$${SITE_B}`,
        '101\\',
        'Z9\\',
        '\\,101',
        `${HOSPITAL}$101`,
        'Z9,urn:oid:1.2.3.4.5',
      ];
      for (const [i, key] of crafted.entries()) {
        await deliver(patient(SITE_A, key, `2001-01-${String(i + 1).padStart(2, '0')}`), SITE_A, key, transactions);
        await deliver(adverseEvent(AE_B.replace('site-b', 'site-a'), `${key},7`, '2030-01-01'), AE_B.replace('site-b', 'site-a'), `${key},7`, transactions);
      }
      // A system holding `,` or `$`, as a namespace of a hostile mapping could.
      await deliver(patient(`${SITE_A},101`, 'Z9', '2002-02-02'), `${SITE_A},101`, 'Z9', transactions);
      await deliver(patient(`x$${SITE_B}`, '101', '2003-03-03'), `x$${SITE_B}`, '101', transactions);
      expect(await victims()).toEqual(before);
      // Each crafted key made its own Patient, found again by its own escaped key.
      for (const key of crafted) {
        const found = (await client.get<Bundle>(conditionalUrl('Patient', SITE_A, key).replace('Patient?', 'Patient?_count=5&'))).body!.entry ?? [];
        expect(found.map((e) => (e.resource as Patient).identifier![0].value)).toEqual([key]);
      }
    });
  }

  it('an escaped | is not honoured by fhir-router (it splits on every |): the reason keys with | are refused', async () => {
    // `Z9\|x` under site A's system, escaped as R4 says, finds site A's Z9: the matcher unescapes, then splits on '|'.
    const found = (await client.get<Bundle>(`Patient?identifier=${tokenSearchParam(SITE_A, 'Z9|x')}`)).body!.entry ?? [];
    expect(found.map((e) => (e.resource as Patient).identifier![0].value)).toEqual(['Z9']);
  });

  it('the mapping rejects the records of a subject whose key holds |, with the reason, and maps the others', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tb-key-'));
    try {
      const csv = await readFile('examples/site-a/export.csv', 'utf8');
      await writeFile(join(dir, 'export.csv'), csv.replaceAll(',A001,', `,A001|${SITE_B}|101,`));
      const mapped = await mapExport(await compileMapping(await loadMapping('mappings/site-a.yaml')), [dir], { recorded: '2019-01-01T00:00:00Z', validate: false });
      const crafted = mapped.summary.rejects.filter((p) => p.reason.includes("holds '|'"));
      expect(crafted.length).toBeGreaterThan(0);
      expect(mapped.bundles.some((b) => b.subject.startsWith('A001'))).toBe(false);
      expect(mapped.bundles.some((b) => b.subject === 'A002')).toBe(true);
      for (const b of mapped.bundles) for (const e of b.bundle.entry!) expect(decodeURIComponent(e.request!.url)).not.toContain(SITE_B);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
