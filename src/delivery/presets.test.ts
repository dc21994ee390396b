import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { destinationClient } from './destination-client.ts';
import { FhirHttpError } from './client.ts';
import { ResponseTooLargeError } from './http-transport.ts';
import { DestinationConfigError, destinationWithDefaults, loadDestinations, type Destination } from './destinations.ts';
import { DEFAULT_MAX_RESPONSE_BYTES, entriesPerTransaction, PRESETS, presetTable, resolveLimits, SERVER_PRESETS } from './presets.ts';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'trialbridge-presets-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function load(yaml: string): Destination[] {
  const path = join(dir, 'destinations.yaml');
  writeFileSync(path, yaml);
  return loadDestinations(path, {});
}

function loadError(yaml: string): DestinationConfigError {
  try {
    load(yaml);
  } catch (error) {
    expect(error).toBeInstanceOf(DestinationConfigError);
    return error as DestinationConfigError;
  }
  throw new Error('expected the load to fail');
}

const one = (server: string, extra = '') => `destinations:
  - name: dest
    kind: hospital
    baseUrl: https://fhir.example/r4
    sites: "*"
    server: ${server}
${extra}    auth: { type: none }
`;

describe('server presets', () => {
  it('each preset resolves to its limits', () => {
    for (const server of SERVER_PRESETS) {
      // Google v1 takes no _tag conditional updates: its destinations leave those types out (see below).
      const extra = server === 'google' ? '    resourceTypes: [Patient, Observation]\n' : '';
      const [d] = load(one(server, extra));
      const limits = PRESETS[server].limits;
      expect(d, server).toMatchObject({
        server,
        maxEntries: entriesPerTransaction(limits),
        transactions: limits.transactions,
        atomicTransactions: limits.atomicTransactions,
        retryAfterFrom: limits.retryAfterFrom,
        conditionalSearch: limits.conditionalSearch,
        maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES,
        concurrency: limits.concurrency,
      });
      expect(d.rateLimit, server).toEqual(limits.rateLimit);
    }
  });

  it('carries what fhir-servers.md documents for the servers it names', () => {
    const byServer = Object.fromEntries(SERVER_PRESETS.map((s) => [s, resolveLimits(s, {})]));
    expect(entriesPerTransaction(byServer.medplum)).toBe(8);
    expect(byServer.medplum).toMatchObject({ maxEntries: 50, atomicTransactions: 'detect', concurrency: 1, retryAfterFrom: ['outcome', 'ratelimit', 'retry-after'] });
    expect(byServer.firely.maxEntries).toBe(150);
    expect(byServer.healthlake).toMatchObject({ maxEntries: 160, rateLimit: { max: 10, perMs: 1000 } });
    expect(byServer.azure).toMatchObject({ maxEntries: 500, retryAfterFrom: ['x-ms-retry-after-ms', 'retry-after'] });
    expect(byServer.google.conditionalSearch).toBe('identifier-only');
    // Atomicity is never taken from a CapabilityStatement: a preset states it or judges each answer.
    for (const s of SERVER_PRESETS) if (byServer[s].transactions === 'detect') expect(byServer[s].atomicTransactions, s).toBe('detect');
  });

  it("lets the destination's own keys win", () => {
    const [d] = load(
      one(
        'medplum',
        `    maxConditionalEntries: 20
    maxEntries: 12
    concurrency: 3
    atomicTransactions: true
    retryAfterFrom: [retry-after]
    maxResponseBytes: 1048576
    pacing: { incidentMs: 2000 }
`,
      ),
    );
    expect(d).toMatchObject({ server: 'medplum', maxEntries: 12, maxConditionalEntries: 20, concurrency: 3, atomicTransactions: true, retryAfterFrom: ['retry-after'], maxResponseBytes: 1_048_576 });
    expect(d.pacing).toEqual({ decrease: 0.5, incidentMs: 2000, recoverAfter: 10, leaseMs: 15_000 });
    // maxEntries alone does not lift Medplum's cap on conditional entries: every entry sent is conditional.
    expect(load(one('medplum', '    maxEntries: 40\n'))[0].maxEntries).toBe(8);
    const [hapi] = load(one('hapi', '    transactions: false\n    rateLimit: { max: 5, perMs: 1000 }\n'));
    expect(hapi).toMatchObject({ transactions: false, atomicTransactions: true, maxEntries: 200, rateLimit: { max: 5, perMs: 1000 } });
  });

  it('without server, a destination is generic: the defaults of before', () => {
    const [d] = load(one('generic').replace('    server: generic\n', ''));
    expect(d).toMatchObject({ server: 'generic', maxEntries: 50, transactions: 'detect', atomicTransactions: 'detect', concurrency: 4, maxResponseBytes: 32 * 1024 * 1024 });
    expect(d.maxConditionalEntries).toBeUndefined();
    expect(destinationWithDefaults({ name: 'x', kind: 'hospital', baseUrl: 'http://127.0.0.1:1' })).toMatchObject({ server: 'generic', maxEntries: 50, concurrency: 4 });
    expect(destinationWithDefaults({ name: 'x', kind: 'hospital', baseUrl: 'http://127.0.0.1:1', server: 'medplum' })).toMatchObject({ maxEntries: 8, concurrency: 1 });
  });

  it('names file, line and key of an unknown preset', () => {
    const error = loadError(one('smile'));
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]).toMatchObject({ line: 6, key: 'destinations.0.server', destination: 'dest' });
    expect(error.message).toMatch(
      /destinations\.yaml:6: destinations\.0\.server \(destination 'dest'\): must be one of generic, hapi, azure, healthlake, google, medplum, firely, aidbox$/,
    );
  });

  it('refuses atomic subjects on a server known not to apply transactions atomically', () => {
    const error = loadError(one('firely', '    atomicTransactions: false\n    atomic: true\n'));
    expect(error.issues.map((i) => `${i.line} ${i.key}: ${i.message}`)).toEqual([
      '8 destinations.0.atomic: asks for each subject in one all-or-nothing transaction, but this server does not apply transactions atomically (atomicTransactions: false)',
    ]);
    expect(load(one('medplum', '    atomic: true\n'))[0]).toMatchObject({ atomic: true, atomicTransactions: 'detect' });
  });

  it('refuses AdverseEvent and Provenance for a server that searches conditional updates by identifier only', () => {
    const error = loadError(one('google', '    resourceTypes: [Patient, AdverseEvent]\n'));
    expect(error.message).toMatch(
      /destinations\.yaml:6: destinations\.0\.server \(destination 'dest'\): this server searches conditional updates by identifier only, and AdverseEvent are updated by _tag: use the v1beta1 endpoint/,
    );
    expect(loadError(one('google')).message).toContain('AdverseEvent and Provenance');
    const own = loadError(one('hapi', '    conditionalSearch: identifier-only\n'));
    expect(own.issues[0]).toMatchObject({ line: 7, key: 'destinations.0.conditionalSearch' });
    const beta = load(one('google').replace('https://fhir.example/r4', 'https://healthcare.googleapis.com/v1beta1/projects/p/locations/l/datasets/d/fhirStores/s/fhir'));
    expect(beta[0].conditionalSearch).toBe('any');
  });

  it("cuts off an answer beyond the destination's maxResponseBytes", async () => {
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/fhir+json' });
      res.end(JSON.stringify({ resourceType: 'Bundle', type: 'searchset', entry: [], padding: 'x'.repeat(4096) }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
      const [small, roomy] = [2048, 8192].map((bytes) => destinationClient(load(one('hapi', `    maxResponseBytes: ${bytes}\n`).replace('https://fhir.example/r4', baseUrl))[0]));
      await expect(small.get('Patient')).rejects.toBeInstanceOf(ResponseTooLargeError);
      expect((await roomy.get('Patient')).status).toBe(200);
    } finally {
      server.close();
    }
  });

  it("reads the server's wait where its preset says, in its order", async () => {
    // One 429 carrying every kind of wait, each a different length.
    const server = createServer((_req, res) => {
      res.writeHead(429, { 'Content-Type': 'application/fhir+json', 'Retry-After': '7', 'x-ms-retry-after-ms': '1500', RateLimit: '"fhirInteractions";r=0;t=5' });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled', diagnostics: JSON.stringify({ _remainingPoints: 0, _msBeforeNext: 3000 }) }] }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
      const waitOf = async (server: string, extra = '') => {
        const client = destinationClient(load(one(server, extra).replace('https://fhir.example/r4', baseUrl))[0]);
        const error = await client.post('', {}).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(FhirHttpError);
        return (error as FhirHttpError).retryAfterMs;
      };
      expect(await waitOf('azure')).toBe(1500);
      expect(await waitOf('hapi')).toBe(7000);
      expect(await waitOf('medplum')).toBe(3000);
      expect(await waitOf('medplum', '    retryAfterFrom: [ratelimit]\n')).toBe(5000);
      expect(await waitOf('generic')).toBe(1500);
    } finally {
      server.close();
    }
  });

  it("README's presets table is the presets'", () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    expect(readme).toContain(presetTable());
  });
});
