import { createHmac } from 'node:crypto';
import type { Bundle, Coding, Patient } from '@medplum/fhirtypes';

export const TRIAL_PATIENT_PROFILE = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/trial-patient';
export const PSEUDONYMISED_PATIENT_PROFILE = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/trial-patient-pseudonymised';

/** Security label put on every pseudonymised resource. */
export const PSEUDONYMISED_LABEL: Coding = {
  system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue',
  code: 'PSEUDED',
  display: 'pseudonymized',
};

/** Patient elements that identify a person directly; removed. */
const PATIENT_REMOVED = ['name', 'telecom', 'address', 'photo', 'contact', 'text'] as const;
/** Patient extensions that identify a person; removed. */
const PATIENT_EXTENSIONS_REMOVED = new Set([
  'http://hl7.org/fhir/StructureDefinition/patient-birthPlace',
  'http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName',
  'http://hl7.org/fhir/StructureDefinition/patient-birthTime',
]);

export interface PseudonymiseOptions {
  /** Encoding of the pseudonyms (default hex: 64 characters). */
  readonly encoding?: 'hex' | 'base64url';
}

const MIN_KEY_BYTES = 16;

function keyBytes(key: Uint8Array | string): Buffer {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : Buffer.from(key);
  if (bytes.length < MIN_KEY_BYTES) throw new Error(`the pseudonymisation key is too short (${MIN_KEY_BYTES} bytes at least)`);
  return bytes;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * A sponsor-bound copy of a subject's bundle (the input is left untouched):
 * - every Patient identifier value becomes HMAC-SHA256(key, `system|value`) (hex or base64url), so the same
 *   key always gives the same pseudonym and nobody without the key can link it back;
 * - wherever one of those values (the site's subject id) appears as a token — business identifiers of the
 *   other resources (`C-001/AE/3` → `<pseudonym>/AE/3`), meta.tag codes, conditional URLs in
 *   entry.request, Reference displays (Provenance entities) — it is replaced by the same pseudonym;
 * - `urn:uuid` fullUrls, which are name-based UUIDs of the real identifiers (and so could be recomputed from a
 *   guessed subject id), are replaced by keyed ones, and every reference follows;
 * - Patient name, telecom, address, photo, contact, narrative and identifying extensions are removed, the
 *   birth date is cut to the year, and its profile becomes trial-patient-pseudonymised;
 * - every resource carries the PSEUDED security label.
 *
 * The bundle must contain the subject's Patient (pseudonymise before splitting a bundle into transactions):
 * without it the subject ids are unknown and the call fails rather than send them.
 */
export function pseudonymiseBundle(bundle: Bundle, key: Uint8Array | string, options: PseudonymiseOptions = {}): Bundle {
  const secret = keyBytes(key);
  const encoding = options.encoding ?? 'hex';
  const hmac = (domain: string, value: string) => createHmac('sha256', secret).update(`${domain}\u0000${value}`, 'utf8').digest();
  const pseudonym = (system: string, value: string) => hmac('identifier', `${system}|${value}`).toString(encoding);

  const out = structuredClone(bundle);
  const entries = out.entry ?? [];

  // The site's subject ids: every Patient identifier value.
  const replacements = new Map<string, string>();
  let patients = 0;
  for (const entry of entries) {
    if (entry.resource?.resourceType !== 'Patient') continue;
    patients++;
    for (const identifier of entry.resource.identifier ?? []) {
      if (typeof identifier.value === 'string' && identifier.value !== '' && !replacements.has(identifier.value)) {
        replacements.set(identifier.value, pseudonym(identifier.system ?? '', identifier.value));
      }
    }
  }
  if (patients === 0) throw new Error('pseudonymiseBundle: the bundle has no Patient, so its subject ids are unknown (pseudonymise before splitting)');

  // A subject id counts where it stands as a whole token: `101` in `101:haic:1`, not in `2101` or `10101`.
  const ids = [...replacements.keys()].sort((a, b) => b.length - a.length);
  const pattern = ids.length > 0 ? new RegExp(`(?<![A-Za-z0-9])(?:${ids.map(escapeRegExp).join('|')})(?![A-Za-z0-9])`, 'g') : undefined;
  const replace = (text: string): string => (pattern ? text.replace(pattern, (id) => replacements.get(id)!) : text);

  const uuid = (old: string): string => {
    const bytes = hmac('fullUrl', old).subarray(0, 16);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // RFC 9562 version 8 (custom)
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = bytes.toString('hex');
    return `urn:uuid:${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
  };
  const reference = (ref: string): string => (ref.startsWith('urn:uuid:') ? uuid(ref) : requestUrl(ref));

  /** `Type?param=system|value&...` with each encoded component rewritten and re-encoded the same way. */
  const requestUrl = (url: string): string => {
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const rewrite = (component: string) => {
      let decoded: string;
      try {
        decoded = decodeURIComponent(component);
      } catch {
        return replace(component);
      }
      const replaced = replace(decoded);
      return replaced === decoded ? component : encodeURIComponent(replaced);
    };
    const newPath = path.split('/').map(rewrite).join('/');
    if (q < 0) return newPath;
    const query = url
      .slice(q + 1)
      .split('&')
      .map((param) => {
        const eq = param.indexOf('=');
        if (eq < 0) return param;
        return `${param.slice(0, eq)}=${param.slice(eq + 1).split('|').map(rewrite).join('|')}`;
      })
      .join('&');
    return `${newPath}?${query}`;
  };

  const walk = (node: unknown): void => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item);
      return;
    }
    if (!isObject(node)) return;
    for (const [name, value] of Object.entries(node)) {
      if (name === 'identifier') {
        for (const identifier of Array.isArray(value) ? value : [value]) {
          if (isObject(identifier) && typeof identifier.value === 'string') identifier.value = replace(identifier.value);
        }
      } else if (name === 'reference' && typeof value === 'string') {
        node.reference = reference(value);
      } else if (name === 'display' && typeof value === 'string' && ('reference' in node || 'identifier' in node)) {
        node.display = replace(value); // a Reference's display, e.g. Provenance.entity.what
      }
      walk(value);
    }
  };

  walk(out.identifier);
  for (const entry of entries) {
    if (entry.fullUrl?.startsWith('urn:uuid:')) entry.fullUrl = uuid(entry.fullUrl);
    if (entry.request) {
      entry.request.url = requestUrl(entry.request.url);
      if (entry.request.ifNoneExist) entry.request.ifNoneExist = requestUrl(`?${entry.request.ifNoneExist}`).slice(1);
    }
    const resource = entry.resource;
    if (!resource) continue;
    walk(resource);
    const meta = (resource.meta ??= {});
    for (const tag of meta.tag ?? []) if (tag.code) tag.code = replace(tag.code);
    if (!meta.security?.some((s) => s.system === PSEUDONYMISED_LABEL.system && s.code === PSEUDONYMISED_LABEL.code)) {
      meta.security = [...(meta.security ?? []), { ...PSEUDONYMISED_LABEL }];
    }
    if (resource.resourceType === 'Patient') strip(resource);
  }
  return out;
}

function strip(patient: Patient): void {
  for (const element of PATIENT_REMOVED) delete patient[element];
  if (patient.birthDate) patient.birthDate = patient.birthDate.slice(0, 4);
  if (patient.extension) {
    patient.extension = patient.extension.filter((e) => !PATIENT_EXTENSIONS_REMOVED.has(e.url));
    if (patient.extension.length === 0) delete patient.extension;
  }
  const meta = (patient.meta ??= {});
  const profiles = (meta.profile ?? []).filter((p) => p.split('|')[0] !== TRIAL_PATIENT_PROFILE && p !== PSEUDONYMISED_PATIENT_PROFILE);
  meta.profile = [PSEUDONYMISED_PATIENT_PROFILE, ...profiles];
}
