/**
 * Reads one study back from any FHIR R4 server with standard searches only: the ResearchStudy by identifier,
 * its ResearchSubjects with their Patients (`_include`), then each subject's clinical resources by type,
 * many subjects per request (comma-separated references), following `Bundle.link` `next` for paging.
 */
import type { Bundle, BundleEntry, Patient, Resource, ResearchStudy, ResearchSubject } from '@medplum/fhirtypes';
import { FhirHttpError, outcomeText, type FhirClient } from '../delivery/client.ts';
import { ResponseTooLargeError } from '../delivery/http-transport.ts';
import { escapeSearchValue } from '../mapping/identity.ts';

/** The mRECIST overall-response Observations of the trial (other Observations of the same patients are not read). */
export const RESPONSE_OBSERVATION_CODE = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/CodeSystem/observation|mrecist-overall-response';

export interface ReadStudyOptions {
  /** `_count` of every search (default 200). */
  readonly pageSize?: number;
  /** Patient references per search (default 40: keeps URLs far below the 8 KB servers commonly accept). */
  readonly batchSize?: number;
  /** Pages read per search at most (default 1000): a server that pages without end is stopped. */
  readonly maxPages?: number;
}

export const DEFAULT_MAX_PAGES = 1000;

/** One subject of the study as read from the server. */
export interface StudySubject {
  readonly researchSubject: ResearchSubject;
  /** Undefined when the server holds no Patient for the subject's `individual`. */
  readonly patient: Patient | undefined;
  /** The Patient, the ResearchSubject and every clinical resource whose subject is the Patient. */
  readonly resources: Resource[];
}

export interface StudySource {
  readonly study: ResearchStudy;
  readonly subjects: StudySubject[];
  /** Search requests sent (pages included). */
  readonly requests: number;
}

/** The study cannot be read from the server's answers; the message says why, in terms a user can act on. */
export class StudySourceError extends Error {
  override readonly name: string = 'StudySourceError';
}

export class StudyNotFoundError extends StudySourceError {
  override readonly name = 'StudyNotFoundError';
}

/**
 * A search the server refused. The message names the resource type, not the URL: a search by subject lists
 * dozens of patient references, which have no place in a terminal or a log.
 */
export class SearchFailedError extends StudySourceError {
  override readonly name = 'SearchFailedError';
  readonly status: number;
  constructor(type: string, cause: FhirHttpError) {
    const detail = outcomeText(cause.outcome);
    super(`${type} search refused by the server: HTTP ${cause.status}${detail ? ` (${detail})` : ''}`, { cause });
    this.status = cause.status;
  }
}

interface ClinicalSearch {
  readonly type: Resource['resourceType'];
  /** extra search parameters besides `subject` */
  readonly params: (studyRef: string) => Record<string, string>;
}

/** What the trial's figures are computed from; every resource refers to its Patient by `subject`. */
const CLINICAL_SEARCHES: readonly ClinicalSearch[] = [
  { type: 'Condition', params: () => ({}) },
  { type: 'Observation', params: () => ({ code: RESPONSE_OBSERVATION_CODE }) },
  { type: 'Procedure', params: () => ({}) },
  { type: 'MedicationAdministration', params: () => ({}) },
  // An adverse event belongs to a study (AdverseEvent.study): those of another study of the same patient stay out.
  { type: 'AdverseEvent', params: (studyRef) => ({ study: studyRef }) },
];

/**
 * A query string with the characters FHIR gives a meaning to (`|` system separator, `,` OR) left literal:
 * encoded, some servers would take them as part of a value.
 */
export function searchQuery(params: Record<string, string>): string {
  return Object.entries(params)
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(value).replace(/%7C/gi, '|').replace(/%2C/gi, ',').replace(/%2F/gi, '/').replace(/%3A/gi, ':')}`)
    .join('&');
}

/** `Type/id` of a reference, relative or absolute (`https://host/fhir/Patient/1/_history/2` → `Patient/1`). */
export function referenceKey(reference: string | undefined): string | undefined {
  if (!reference) return undefined;
  const parts = reference.split('?')[0].split('/');
  const history = parts.lastIndexOf('_history');
  const end = history >= 2 ? history : parts.length;
  return end >= 2 ? `${parts[end - 2]}/${parts[end - 1]}` : undefined;
}

function resourceKey(resource: Resource): string {
  return `${resource.resourceType}/${resource.id ?? ''}`;
}

/** Reads every page of a search and counts the requests. */
export class SearchReader {
  readonly #client: FhirClient;
  readonly #pageSize: number;
  readonly #maxPages: number;
  #requests = 0;

  constructor(client: FhirClient, pageSize = 200, maxPages = DEFAULT_MAX_PAGES) {
    this.#client = client;
    this.#pageSize = pageSize;
    this.#maxPages = maxPages;
  }

  get requests(): number {
    return this.#requests;
  }

  /**
   * Every entry of a search, all pages: `next` links are followed as given. A server that pages with `_count`
   * but writes no links (fhir-router's MemoryRepository, behind the embedded server) is paged with `_offset`
   * while its `total` says matches are missing; a server that ignores `_offset` is caught by the repeated
   * matches rather than looped on. A `next` link to a page already read (a link to itself made a loop of
   * 200,000 requests in 30 s, each with the token) and more than `maxPages` pages end the search with an error.
   */
  async search(type: string, params: Record<string, string>): Promise<BundleEntry[]> {
    const base = { ...params, _count: String(this.#pageSize) };
    const origin = new URL(this.#client.baseUrl).origin;
    const entries: BundleEntry[] = [];
    const matched = new Set<string>();
    let path: string | undefined = `${type}?${searchQuery(base)}`;
    const read = new Set<string>();
    while (path !== undefined) {
      if (read.size >= this.#maxPages) throw new StudySourceError(`${type} search: more than ${this.#maxPages} pages; stopped (a server paging without end?)`);
      read.add(this.#client.url(path));
      this.#requests++;
      const started = performance.now();
      const bundle: Bundle | undefined = await this.#client.get<Bundle>(path).then(
        (response) => response.body,
        (err: unknown) => {
          throw searchError(type, err, performance.now() - started, this.#client.timeoutMs);
        },
      );
      if (bundle?.resourceType !== 'Bundle') throw new StudySourceError(`${type} search: the server did not answer with a Bundle`);
      const page = bundle.entry ?? [];
      let fresh = 0;
      for (const entry of page) {
        if (!entry.resource) continue;
        const isMatch = entry.search?.mode !== 'include' && entry.search?.mode !== 'outcome';
        if (isMatch) {
          const key = resourceKey(entry.resource);
          if (matched.has(key)) continue;
          matched.add(key);
          fresh++;
        }
        entries.push(entry);
      }
      const next: string | undefined = bundle.link?.find((l) => l.relation === 'next')?.url;
      if (next) {
        // Auth headers go with every request: never to a host other than the server's.
        if (new URL(next, this.#client.baseUrl).origin !== origin) throw new StudySourceError(`${type} search: the server's next link leaves ${origin}: not followed`);
        if (read.has(this.#client.url(next))) throw new StudySourceError(`${type} search: the server's next link points to a page already read (a paging loop); stopped after ${read.size} pages`);
        path = next;
      } else if (bundle.total !== undefined && matched.size < bundle.total && page.length > 0) {
        if (fresh === 0) throw new StudySourceError(`${type} search: paging with _offset returned the same matches again (the server ignores _offset and gives no next link)`);
        path = `${type}?${searchQuery({ ...base, _offset: String(matched.size) })}`;
      } else {
        path = undefined;
      }
    }
    return entries;
  }
}

/**
 * Why a search request failed, naming the search. A timeout shows as node's own abort error (ECONNRESET
 * "aborted" once the body had begun): the time taken tells it apart.
 */
function searchError(type: string, err: unknown, elapsedMs: number, timeoutMs: number): unknown {
  if (err instanceof FhirHttpError) return new SearchFailedError(type, err);
  if (err instanceof ResponseTooLargeError) return new StudySourceError(`${type} search: the server's answer is too large (${err.message})`, { cause: err });
  if (elapsedMs >= timeoutMs) return new StudySourceError(`${type} search: no complete answer within ${timeoutMs} ms (--timeout)`, { cause: err });
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return new StudySourceError(`${type} search: the connection failed (${code})`, { cause: err });
  return err;
}

function chunks<T>(list: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

/**
 * `system|value` or a bare value (any system). The first `|` separates system from value; each part is
 * escaped (`\\ , | $`) so that a `,` in it is no OR and a further `|` is part of the value.
 */
async function findStudy(reader: SearchReader, identifier: string): Promise<ResearchStudy> {
  const bar = identifier.indexOf('|');
  const token = bar < 0 ? escapeSearchValue(identifier) : `${escapeSearchValue(identifier.slice(0, bar))}|${escapeSearchValue(identifier.slice(bar + 1))}`;
  const studies = (await reader.search('ResearchStudy', { identifier: token }))
    .map((e) => e.resource)
    .filter((r): r is ResearchStudy => r?.resourceType === 'ResearchStudy');
  if (studies.length === 0) throw new StudyNotFoundError(`no ResearchStudy with identifier ${identifier} on the server`);
  if (studies.length > 1) throw new StudyNotFoundError(`${studies.length} ResearchStudy resources have identifier ${identifier}: give system|value`);
  return studies[0];
}

/** Reads a study and everything the trial's figures need about its subjects. */
export async function readStudy(client: FhirClient, identifier: string, options: ReadStudyOptions = {}): Promise<StudySource> {
  const reader = new SearchReader(client, options.pageSize, options.maxPages);
  const batchSize = options.batchSize ?? 40;
  const study = await findStudy(reader, identifier);
  const studyRef = `ResearchStudy/${study.id}`;

  const researchSubjects: ResearchSubject[] = [];
  const patients = new Map<string, Patient>();
  for (const entry of await reader.search('ResearchSubject', { study: escapeSearchValue(studyRef), _include: 'ResearchSubject:individual' })) {
    const resource = entry.resource;
    if (resource?.resourceType === 'ResearchSubject') researchSubjects.push(resource);
    else if (resource?.resourceType === 'Patient') patients.set(resourceKey(resource), resource);
  }
  const patientRefs = [...new Set(researchSubjects.map((rs) => referenceKey(rs.individual?.reference)).filter((r): r is string => r?.startsWith('Patient/') === true))];
  // A server without _include support answers the subjects alone: read their Patients by id.
  const missing = patientRefs.filter((ref) => !patients.has(ref));
  for (const batch of chunks(missing, batchSize)) {
    // Ids come from the server's answers: escaped, so that an id holding `,` stays one id.
    for (const entry of await reader.search('Patient', { _id: batch.map((ref) => escapeSearchValue(ref.slice('Patient/'.length))).join(',') })) {
      if (entry.resource?.resourceType === 'Patient') patients.set(resourceKey(entry.resource), entry.resource);
    }
  }

  const byPatient = new Map<string, Resource[]>(patientRefs.map((ref) => [ref, []]));
  for (const batch of chunks(patientRefs, batchSize)) {
    const pages = await Promise.all(CLINICAL_SEARCHES.map((s) => reader.search(s.type, { subject: batch.map(escapeSearchValue).join(','), ...s.params(escapeSearchValue(studyRef)) })));
    for (const entry of pages.flat()) {
      const resource = entry.resource as (Resource & { subject?: { reference?: string } }) | undefined;
      if (!resource || entry.search?.mode === 'include') continue;
      byPatient.get(referenceKey(resource.subject?.reference) ?? '')?.push(resource);
    }
  }

  const subjects = researchSubjects.map((researchSubject): StudySubject => {
    const ref = referenceKey(researchSubject.individual?.reference) ?? '';
    const patient = patients.get(ref);
    return { researchSubject, patient, resources: [...(patient ? [patient] : []), researchSubject, ...(byPatient.get(ref) ?? [])] };
  });
  return { study, subjects, requests: reader.requests };
}
