import { describe, expect, it } from 'vitest';
import type { Bundle, Patient, Resource, ResearchStudy, ResearchSubject } from '@medplum/fhirtypes';
import { FhirClient } from '../../src/delivery/client.ts';
import { readStudy, referenceKey, SearchFailedError, SearchReader, searchQuery, StudyNotFoundError } from '../../src/report/fhir-source.ts';

const BASE = 'https://fhir.example.org/R4';

/** A fetch answering searches from a function of the request URL; records the URLs. */
function fakeServer(answer: (url: URL) => Bundle): { fetch: typeof fetch; urls: URL[] } {
  const urls: URL[] = [];
  const fetchFn: typeof fetch = async (input) => {
    const url = new URL(String(input));
    urls.push(url);
    return Response.json(answer(url));
  };
  return { fetch: fetchFn, urls };
}

const searchset = (resources: Resource[], extra: Partial<Bundle> = {}): Bundle => ({
  resourceType: 'Bundle',
  type: 'searchset',
  entry: resources.map((resource) => ({ resource, search: { mode: 'match' } })),
  ...extra,
});

const patient = (id: string): Patient => ({ resourceType: 'Patient', id });

describe('searchQuery and referenceKey', () => {
  it('keeps the FHIR separators literal and encodes the rest', () => {
    expect(searchQuery({ identifier: 'urn:x:study|A&B', subject: 'Patient/1,Patient/2' })).toBe('identifier=urn:x:study|A%26B&subject=Patient/1,Patient/2');
  });

  it('reduces relative, absolute and versioned references to Type/id', () => {
    expect(referenceKey('Patient/1')).toBe('Patient/1');
    expect(referenceKey('https://h/fhir/R4/Patient/1')).toBe('Patient/1');
    expect(referenceKey('https://h/fhir/R4/Patient/1/_history/3')).toBe('Patient/1');
    expect(referenceKey('x')).toBeUndefined();
    expect(referenceKey(undefined)).toBeUndefined();
  });
});

describe('SearchReader', () => {
  it('refuses a next link to another host (the auth headers would go with it)', async () => {
    const server = fakeServer(() => searchset([patient('1')], { link: [{ relation: 'next', url: 'https://elsewhere.example.com/R4?page=2' }] }));
    const reader = new SearchReader(new FhirClient({ baseUrl: BASE, fetch: server.fetch }));
    await expect(reader.search('Patient', {})).rejects.toThrow(/leaves https:\/\/fhir\.example\.org: not followed/);
    expect(server.urls).toHaveLength(1);
  });

  it('stops with an error, not a loop, when the server ignores _offset and writes no links', async () => {
    const server = fakeServer(() => searchset([patient('1'), patient('2')], { total: 5 }));
    const reader = new SearchReader(new FhirClient({ baseUrl: BASE, fetch: server.fetch }), 2);
    await expect(reader.search('Patient', {})).rejects.toThrow(/ignores _offset/);
    expect(server.urls.map((u) => u.searchParams.get('_offset'))).toEqual([null, '2']);
  });

  it('names the refused search by type, not by its URL (which lists patient references)', async () => {
    const refusing: typeof fetch = async () =>
      Response.json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'forbidden', details: { text: 'scope too narrow' } }] }, { status: 403 });
    const reader = new SearchReader(new FhirClient({ baseUrl: BASE, fetch: refusing }));
    const failure = reader.search('Observation', { subject: 'Patient/1,Patient/2' });
    await expect(failure).rejects.toThrow(SearchFailedError);
    await expect(failure).rejects.toThrow(/^Observation search refused by the server: HTTP 403 \(scope too narrow\)$/);
  });

  it('reads one page when the server says nothing more matches', async () => {
    const server = fakeServer(() => searchset([patient('1')], { total: 1 }));
    const reader = new SearchReader(new FhirClient({ baseUrl: BASE, fetch: server.fetch }));
    expect(await reader.search('Patient', { name: 'x' })).toHaveLength(1);
    expect(reader.requests).toBe(1);
    expect(server.urls[0].search).toBe('?name=x&_count=200');
  });
});

describe('readStudy', () => {
  const study: ResearchStudy = { resourceType: 'ResearchStudy', id: 's1', status: 'completed', identifier: [{ system: 'urn:t:research-study', value: 'T' }] };
  const subject = (id: string, patientRef: string): ResearchSubject => ({
    resourceType: 'ResearchSubject',
    id,
    status: 'on-study',
    study: { reference: 'ResearchStudy/s1' },
    individual: { reference: patientRef },
  });

  it('reads the Patients by _id from a server that ignores _include, and files each resource under its subject', async () => {
    const server = fakeServer((url) => {
      const type = url.pathname.split('/').at(-1);
      if (type === 'ResearchStudy') return searchset([study]);
      if (type === 'ResearchSubject') return searchset([subject('r1', `${BASE}/Patient/p1`), subject('r2', 'Patient/p2')]);
      if (type === 'Patient') return searchset(url.searchParams.get('_id')!.split(',').map(patient));
      if (type === 'AdverseEvent') {
        expect(url.searchParams.get('study')).toBe('ResearchStudy/s1');
        return searchset([{ resourceType: 'AdverseEvent', id: 'ae1', actuality: 'actual', subject: { reference: 'Patient/p2' } }]);
      }
      return searchset([]);
    });
    const source = await readStudy(new FhirClient({ baseUrl: BASE, fetch: server.fetch }), 'T');
    expect(source.study.id).toBe('s1');
    expect(source.subjects.map((s) => [s.patient?.id, s.resources.map((r) => r.resourceType)])).toEqual([
      ['p1', ['Patient', 'ResearchSubject']],
      ['p2', ['Patient', 'ResearchSubject', 'AdverseEvent']],
    ]);
    const byType = server.urls.map((u) => `${u.pathname.split('/').at(-1)}?${u.searchParams.get('_id') ?? u.searchParams.get('subject') ?? u.searchParams.get('identifier') ?? u.searchParams.get('study')}`);
    expect(byType).toEqual([
      'ResearchStudy?T',
      'ResearchSubject?ResearchStudy/s1',
      'Patient?p1,p2',
      'Condition?Patient/p1,Patient/p2',
      'Observation?Patient/p1,Patient/p2',
      'Procedure?Patient/p1,Patient/p2',
      'MedicationAdministration?Patient/p1,Patient/p2',
      'AdverseEvent?Patient/p1,Patient/p2',
    ]);
  });

  it('names a missing or ambiguous study', async () => {
    const none = fakeServer(() => searchset([]));
    await expect(readStudy(new FhirClient({ baseUrl: BASE, fetch: none.fetch }), 'T')).rejects.toThrow(StudyNotFoundError);
    const two = fakeServer(() => searchset([study, { ...study, id: 's2' }]));
    await expect(readStudy(new FhirClient({ baseUrl: BASE, fetch: two.fetch }), 'T')).rejects.toThrow(/2 ResearchStudy resources have identifier T: give system\|value/);
  });
});
