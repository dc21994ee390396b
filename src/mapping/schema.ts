/** JSON Schema of a mapping file once `extends` is resolved (ajv, draft-07). */
const coding = {
  type: 'object',
  required: ['code'],
  additionalProperties: false,
  properties: { system: { type: 'string' }, code: { type: 'string' }, display: { type: 'string' } },
};

export const mappingSchema = {
  $id: 'https://trialbridge.dev/schema/mapping.json',
  type: 'object',
  required: ['trial', 'site', 'version', 'source', 'resources'],
  additionalProperties: false,
  properties: {
    $schema: { type: 'string', description: 'JSON Schema of this file, for editors; ignored by the loader.' },
    extends: { type: 'string', description: 'Base mapping this file builds on (a .yaml file in the same directory); this file is merged over it key by key, null removes a key.' },
    trial: {
      type: 'object',
      required: ['id', 'namespace'],
      additionalProperties: false,
      properties: {
        id: { type: 'string', minLength: 1 },
        namespace: { type: 'string', pattern: '^(urn:|https?://)' },
        canonical: { type: 'string', pattern: '^https?://' },
      },
    },
    site: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]*$', description: 'Site id: part of every identifier system and of the output names; fixtures live in <site>/tests/.' },
    version: { type: 'string', minLength: 1, description: 'Mapping version, recorded in every Provenance.' },
    description: { type: 'string' },
    source: {
      type: 'object',
      required: ['format', 'files', 'subject', 'enrolment'],
      additionalProperties: false,
      properties: {
        format: { enum: ['csv', 'json', 'ndjson', 'redcap', 'sdtm'] },
        encoding: { type: 'string' },
        delimiter: { type: 'string', minLength: 1, maxLength: 1 },
        files: {
          type: 'array',
          minItems: 1,
          items: {
            type: 'object',
            required: ['match'],
            additionalProperties: false,
            properties: {
              match: { type: 'string', minLength: 1, description: 'File-name glob. A file feeds only the first files entry it matches.' },
              type: { type: 'string', description: 'Record type of every row of the matched files (rules select records by type with from).' },
              key: { type: 'string', description: 'FHIRPath record key for rows of these files (default: source.recordKey, else file#row).' },
              optional: { type: 'boolean', description: 'No matching input file is not an error.' },
            },
          },
        },
        dictionary: { type: 'string', description: 'REDCap data dictionary file name among the inputs (codes to labels).' },
        recordsAt: { type: 'string', description: 'json format: dotted path of the record array inside each file (default: the file is the array).' },
        subject: { type: 'string', minLength: 1, description: 'FHIRPath giving the subject key of a record.' },
        recordType: { type: 'string', description: 'FHIRPath giving the record type (default: files[].type, else record).' },
        recordKey: { type: 'string', description: 'FHIRPath giving the record key, unique per subject and type.' },
        enrolment: {
          description: 'Record type(s) whose presence enrols a subject; records of subjects without one are rejected.', oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1 }] },
      },
    },
    dates: {
      type: 'object',
      additionalProperties: false,
      properties: {
        formats: { type: 'array', items: { type: 'string' } },
        timezone: { type: 'string' },
      },
    },
    constants: { type: 'object', additionalProperties: { type: ['string', 'number', 'boolean'] } },
    valueMaps: {
      type: 'object',
      additionalProperties: {
        type: 'object',
        required: ['map'],
        additionalProperties: false,
        properties: {
          system: { type: 'string' },
          caseInsensitive: { type: 'boolean' },
          unmapped: {
            oneOf: [
              { enum: ['error', 'omit'] },
              {
                type: 'object',
                required: ['default'],
                additionalProperties: false,
                properties: { default: { oneOf: [{ type: 'string' }, coding] } },
              },
            ],
          },
          map: { type: 'object', additionalProperties: { oneOf: [{ type: 'string' }, coding] } },
        },
      },
    },
    conceptMaps: { type: 'object', additionalProperties: { type: 'string' } },
    resources: {
      type: 'object',
      minProperties: 1,
      additionalProperties: {
        type: 'object',
        required: ['type', 'from', 'template'],
        additionalProperties: false,
        properties: {
          type: { type: 'string', pattern: '^[A-Z][A-Za-z]+$' },
          from: { oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1 }], description: 'Record type(s) the rule reads.' },
          when: { type: 'string', description: 'FHIRPath condition on the record (computed before the lets: it cannot read them).' },
          key: { type: 'string', description: 'FHIRPath business key of the resource (computed before the lets).' },
          groupBy: { type: 'string', description: 'FHIRPath: records with the same value make one resource (computed before the lets).' },
          scope: { enum: ['site', 'trial'], description: 'trial: one resource for the whole trial, identifier system without the site (e.g. the ResearchStudy).' },
          let: { type: 'object', description: 'Values the template reads ($var: name, %name), computed in order per record: a let reads only lets above it.' },
          template: { type: 'object', description: 'The FHIR resource, with $expr, $date, $map, $quantity, $ref, $var, $const, $first and $when directives.' },
          profiles: { type: 'array', items: { type: 'string' }, description: 'Profile canonicals the resource claims (meta.profile) and is validated against.' },
          disabled: { type: 'boolean', description: 'Drop a base rule for this site.' },
        },
      },
    },
  },
} as const;


/** Where the published schema is committed; the sample mappings point their editors at it. */
export const PUBLISHED_SCHEMA_FILE = 'mappings/mapping.schema.json';

/** A copy of a schema node without `required`, except inside array items (arrays replace, they do not merge). */
function withoutRequired(node: unknown, inItems = false): unknown {
  if (Array.isArray(node)) return node.map((n) => withoutRequired(n, inItems));
  if (node === null || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === 'required' && !inItems) continue;
    out[key] = withoutRequired(value, inItems || key === 'items');
  }
  return out;
}

/**
 * The schema editors check one mapping file against (mappings/mapping.schema.json, written from this module by
 * `node scripts/write-mapping-schema.ts`). One file of an `extends` chain is a part of a mapping: a site file leaves the trial
 * to its base and a base leaves `from` and `let` to its sites, so keys the merged mapping requires are optional
 * here; the loader checks them on the merged mapping.
 */
export function publishedMappingSchema(): Record<string, unknown> {
  const { $id, ...rest } = withoutRequired(mappingSchema) as Record<string, unknown>;
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id,
    title: 'trialbridge mapping file',
    description: 'One file of a trialbridge mapping (a base or a site file); see mappings/README.md. Generated from src/mapping/schema.ts.',
    ...rest,
  };
}
