/** The OpenAPI 3.1 document of the API (served at /openapi.json). */

const error = { $ref: '#/components/responses/Error' };
const json = (schema: object) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const idParam = (name: string, description: string) => ({ name, in: 'path', required: true, description, schema: { type: 'string' } });
const secured = [{ bearerAuth: [] }, { apiKeyHeader: [] }];
const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [String(c), error]));

export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'trialbridge API',
      version: '0.1.0',
      description:
        'Submit clinical-trial site exports for mapping to FHIR R4 and delivery; follow submissions, dead letters and replays. Every /v1 route needs an API key scoped to one site.',
    },
    security: secured,
    paths: {
      '/v1/sites/{site}/submissions': {
        post: {
          operationId: 'submitExport',
          summary: "Submit a site's export (multipart files or JSON)",
          description:
            'Multipart: files only (field "files"; any other field is refused). JSON: exactly { "files": [{ "name", "content" }] }, no duplicate keys, no other keys. ' +
            'A body over the limit is refused with 413 (a declared length before it is read, a chunked one as soon as it passes the limit). ' +
            'A file that cannot be read at all (binary, wrong encoding, unbalanced quotes, empty, too deep) is refused with 422 naming file and line; ' +
            'malformed rows (ragged, over the field length limit, duplicate keys) are accepted as rejects, each a dead letter naming file, row and field.',
          parameters: [idParam('site', 'Site id (must match the API key and have a mapping)')],
          requestBody: {
            required: true,
            content: {
              'multipart/form-data': { schema: { type: 'object', properties: { files: { type: 'array', items: { type: 'string', format: 'binary' } } }, required: ['files'] } },
              'application/json': { schema: ref('JsonExport') },
            },
          },
          responses: {
            '202': { description: 'Accepted and queued', headers: { Location: { schema: { type: 'string' }, description: 'URL of the submission' } }, content: json(ref('SubmissionAccepted')) },
            ...errors(400, 401, 403, 404, 413, 415, 422),
          },
        },
      },
      '/v1/submissions/{id}': {
        get: {
          operationId: 'getSubmission',
          summary: 'Counts per state and destination, and the rejected records with reasons (no field values)',
          parameters: [idParam('id', 'Submission id')],
          responses: { '200': { description: 'The submission', content: json(ref('Submission')) }, ...errors(401, 404) },
        },
      },
      '/v1/submissions/{id}/subjects': {
        get: {
          operationId: 'getSubmissionSubjects',
          summary: "Each subject's state per destination: delivered, dead-lettered (with the dead letters' ids, usable as they are in /v1/dead-letters/{id}), pending or not-for-destination",
          parameters: [idParam('id', 'Submission id')],
          responses: { '200': { description: 'The subjects', content: json(ref('SubmissionSubjects')) }, ...errors(401, 404) },
        },
      },
      '/v1/submissions/{id}/replay': {
        post: {
          operationId: 'replaySubmission',
          summary: 'Replay every dead letter of a submission',
          parameters: [idParam('id', 'Submission id')],
          responses: { '202': { description: 'Replayed', content: json(ref('ReplayResult')) }, ...errors(401, 404) },
        },
      },
      '/v1/dead-letters': {
        get: {
          operationId: 'listDeadLetters',
          summary: 'Dead letters of a submission',
          parameters: [{ name: 'submission', in: 'query', required: true, schema: { type: 'string' } }],
          responses: {
            '200': { description: 'Dead letters', content: json({ type: 'object', properties: { submission: { type: 'string' }, deadLetters: { type: 'array', items: ref('DeadLetterSummary') } } }) },
            ...errors(400, 401, 404),
          },
        },
      },
      '/v1/dead-letters/{id}': {
        get: {
          operationId: 'getDeadLetter',
          summary: "One dead letter (location, reason code, reason without values, the OperationOutcome's severities and codes; never record or server text)",
          parameters: [idParam('id', 'Dead letter id')],
          responses: { '200': { description: 'The dead letter', content: json(ref('DeadLetter')) }, ...errors(401, 404) },
        },
      },
      '/v1/dead-letters/{id}/replay': {
        post: {
          operationId: 'replayDeadLetter',
          summary: 'Replay one dead letter',
          parameters: [idParam('id', 'Dead letter id')],
          responses: { '202': { description: 'Replayed', content: json(ref('ReplayResult')) }, ...errors(401, 404) },
        },
      },
      '/healthz': {
        get: { operationId: 'health', summary: 'Process is up', security: [], responses: { '200': { description: 'Up', content: json({ type: 'object', properties: { status: { const: 'ok' } } }) } } },
      },
      '/readyz': {
        get: {
          operationId: 'ready',
          summary: "Redis answers and each destination's /metadata is reachable (destinations probed at most every 5 s, Redis each time; the checks only with the admin key)",
          security: [],
          responses: { '200': { description: 'Ready', content: json(ref('Readiness')) }, '503': { description: 'Not ready', content: json(ref('Readiness')) } },
        },
      },
      '/metrics': {
        get: { operationId: 'metrics', summary: 'Prometheus metrics', security: [], responses: { '200': { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } } } },
      },
      '/openapi.json': {
        get: { operationId: 'openapi', summary: 'This document', security: [], responses: { '200': { description: 'OpenAPI 3.1', content: json({ type: 'object' }) } } },
      },
      '/admin/queues': {
        get: {
          operationId: 'bullBoard',
          summary: 'Bull Board queue UI (and its API under this path); admin key required',
          security: [{ adminKey: [] }],
          responses: { '200': { description: 'HTML UI', content: { 'text/html': { schema: { type: 'string' } } } }, ...errors(401, 404) },
        },
      },
    },
    components: {
      securitySchemes: {
        bearerAuth: { type: 'http', scheme: 'bearer', description: 'Site-scoped API key' },
        apiKeyHeader: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'Site-scoped API key' },
        adminKey: { type: 'http', scheme: 'bearer', description: 'Admin key (Bull Board)' },
      },
      responses: {
        Error: { description: 'Error', content: json(ref('Error')) },
      },
      schemas: {
        Error: {
          type: 'object',
          required: ['error'],
          properties: {
            error: {
              type: 'object',
              required: ['code', 'message'],
              properties: {
                code: { type: 'string' },
                message: { type: 'string', description: 'Why, in words that quote no value from the request' },
                file: { type: 'string', description: 'The export file at fault (unreadable_export, payload_too_large)' },
                line: { type: 'integer', description: 'Its line, when known' },
                offset: { type: 'integer', description: 'Its byte offset, when known (an invalid byte, a NUL)' },
              },
            },
          },
        },
        JsonExport: {
          type: 'object',
          required: ['files'],
          properties: { files: { type: 'array', minItems: 1, items: { type: 'object', required: ['name', 'content'], properties: { name: { type: 'string' }, content: { type: 'string' } } } } },
        },
        SubmissionAccepted: {
          type: 'object',
          required: ['id', 'site', 'queued'],
          properties: {
            id: { type: 'string' },
            site: { type: 'string' },
            subjects: { type: 'integer' },
            queued: { type: 'integer' },
            duplicates: { type: 'integer' },
            recordsRejected: { type: 'integer' },
            location: { type: 'string' },
          },
        },
        DestinationCounts: {
          type: 'object',
          properties: { queued: { type: 'integer' }, duplicates: { type: 'integer' }, delivered: { type: 'integer' }, deadLettered: { type: 'integer' }, replayed: { type: 'integer' }, pending: { type: 'integer' } },
        },
        Reject: {
          type: 'object',
          required: ['id', 'stage', 'reason'],
          properties: {
            id: { type: 'string' },
            stage: { enum: ['read', 'map'] },
            file: { type: 'string' },
            row: { type: 'integer' },
            recordKey: { type: 'string' },
            field: { type: 'string' },
            rule: { type: 'string', description: 'The mapping rule whose resource the record fed' },
            code: ref('ReasonCode'),
            reason: { type: 'string', description: 'Why, with quoted values and dates masked' },
            replayable: { type: 'boolean' },
          },
        },
        ReasonCode: { enum: ['record_rejected', 'mapping_failed', 'delivery_rejected', 'delivery_gave_up', 'destination_profiles', 'bundle_expired'] },
        Submission: {
          type: 'object',
          required: ['id', 'site', 'status', 'counts', 'destinations', 'rejects'],
          properties: {
            id: { type: 'string' },
            site: { type: 'string' },
            status: { enum: ['in-progress', 'finished'] },
            counts: {
              type: 'object',
              properties: {
                subjects: { type: 'integer' },
                queued: { type: 'integer' },
                duplicates: { type: 'integer' },
                mapped: { type: 'integer' },
                rejected: { type: 'object', properties: { subjects: { type: 'integer' }, records: { type: 'integer' } } },
                mappingFailed: { type: 'integer' },
                delivered: { type: 'integer' },
                deadLettered: { type: 'integer' },
                replayed: { type: 'integer' },
              },
            },
            destinations: { type: 'object', additionalProperties: ref('DestinationCounts') },
            rejects: { type: 'array', items: ref('Reject') },
          },
        },
        DeadLetterSummary: {
          type: 'object',
          required: ['id', 'stage', 'reason', 'replayable'],
          properties: {
            id: { type: 'string' },
            stage: { enum: ['read', 'map', 'deliver'] },
            location: { type: 'object', properties: { file: { type: 'string' }, row: { type: 'integer' }, key: { type: 'string' }, field: { type: 'string' }, rule: { type: 'string' } } },
            destination: { type: 'string' },
            status: { type: 'integer' },
            code: ref('ReasonCode'),
            reason: { type: 'string', description: "Why, with quoted values and dates masked; a server's own text is not repeated" },
            issues: { type: 'array', items: { type: 'object', properties: { severity: { type: 'string' }, code: { type: 'string' } } }, description: "The OperationOutcome's issues without their text" },
            replayable: { type: 'boolean' },
            createdAt: { type: 'string', format: 'date-time' },
          },
        },
        DeadLetter: {
          allOf: [ref('DeadLetterSummary')],
          type: 'object',
          properties: { submissionId: { type: 'string' }, site: { type: 'string' } },
        },
        SubmissionSubjects: {
          type: 'object',
          required: ['submission', 'site', 'subjects', 'counts'],
          properties: {
            submission: { type: 'string' },
            site: { type: 'string' },
            subjects: {
              type: 'array',
              items: {
                type: 'object',
                required: ['subject', 'destination', 'state'],
                properties: {
                  subject: { type: 'string', description: "The subject's key in the site's export" },
                  destination: { type: 'string' },
                  state: { enum: ['delivered', 'dead-lettered', 'pending', 'not-for-destination'] },
                  deadLetters: { type: 'array', items: { type: 'string' }, description: 'Ids of the dead letters holding it back (dead-lettered only)' },
                  sameAs: { type: 'string', description: "A duplicate: the earlier submission whose identical data stands for this one's; the state is that one's" },
                },
              },
            },
            counts: { type: 'object', additionalProperties: { type: 'integer' } },
          },
        },
        ReplayResult: {
          type: 'object',
          properties: { replayed: { type: 'array', items: { type: 'string' } }, jobs: { type: 'array', items: { type: 'string' } }, skipped: { type: 'array', items: { type: 'string' } } },
        },
        Readiness: {
          type: 'object',
          properties: {
            status: { enum: ['ready', 'not ready'] },
            checks: { type: 'object', additionalProperties: { type: 'object', properties: { ok: { type: 'boolean' }, message: { type: 'string' } } } },
          },
        },
      },
    },
  };
}
