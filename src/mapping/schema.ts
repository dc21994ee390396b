/** JSON Schema of a mapping file once `extends` is resolved (ajv, draft 2020-12 subset). */
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
    $schema: { type: 'string' },
    extends: { type: 'string' },
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
    site: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]*$' },
    version: { type: 'string', minLength: 1 },
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
              match: { type: 'string', minLength: 1 },
              type: { type: 'string' },
              key: { type: 'string' },
              optional: { type: 'boolean' },
            },
          },
        },
        dictionary: { type: 'string' },
        recordsAt: { type: 'string' },
        subject: { type: 'string', minLength: 1 },
        recordType: { type: 'string' },
        recordKey: { type: 'string' },
        enrolment: { oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1 }] },
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
          from: { oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1 }] },
          when: { type: 'string' },
          key: { type: 'string' },
          groupBy: { type: 'string' },
          scope: { enum: ['site', 'trial'] },
          let: { type: 'object' },
          template: { type: 'object' },
          profiles: { type: 'array', items: { type: 'string' } },
          disabled: { type: 'boolean' },
        },
      },
    },
  },
} as const;
