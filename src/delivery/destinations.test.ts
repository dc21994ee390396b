import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { exportPKCS8, generateKeyPair } from 'jose';
import { afterEach, beforeEach, describe as group, expect, it } from 'vitest';
import { createAuth } from './auth/index.ts';
import { acceptsResourceType, acceptsSite, DestinationConfigError, describe, loadDestinations, Secret } from './destinations.ts';
import { makeTestCertificate } from '../../test/support/test-certificate.ts';

const EXAMPLE = new URL('../../destinations.example.yaml', import.meta.url).pathname;
const REGISTRY_SECRET = 'test-only-registry-client-secret';
const SPONSOR_TOKEN = 'test-only-sponsor-api-token';
const PSEUDONYM_KEY = 'test-only-pseudonymisation-key-0123456789';

let dir: string;
const caCert = makeTestCertificate().cert;
let pem: string;
beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'trialbridge-destinations-'));
  mkdirSync(join(dir, 'secrets'));
  pem = await exportPKCS8((await generateKeyPair('RS384', { extractable: true })).privateKey);
  writeFileSync(join(dir, 'secrets', 'hopital-a-smart-key.pem'), pem);
  writeFileSync(join(dir, 'secrets', 'sponsor-api-token'), `${SPONSOR_TOKEN}\n`);
  mkdirSync(join(dir, 'certs'));
  writeFileSync(join(dir, 'certs', 'hopital-a-ca.pem'), caCert);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const env = { TB_REGISTRY_CLIENT_SECRET: REGISTRY_SECRET, TB_SPONSOR_PSEUDONYM_KEY: PSEUDONYM_KEY };

function write(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

function loadError(path: string, environment: NodeJS.ProcessEnv = env): DestinationConfigError {
  try {
    loadDestinations(path, environment);
  } catch (err) {
    expect(err).toBeInstanceOf(DestinationConfigError);
    return err as DestinationConfigError;
  }
  throw new Error('expected the load to fail');
}

const MINIMAL = (extra: string) => `destinations:
  - name: sponsor
    kind: sponsor
    baseUrl: https://fhir.sponsor.example/r4
    sites: "*"
    pseudonymisationKey: { env: TB_SPONSOR_PSEUDONYM_KEY }
${extra}`;

group('loadDestinations', () => {
  it('loads the example with its secrets and defaults', () => {
    copyFileSync(EXAMPLE, join(dir, 'destinations.yaml'));
    const [hospital, registry, sponsor] = loadDestinations(join(dir, 'destinations.yaml'), env);

    expect(hospital).toMatchObject({ name: 'hopital-a', kind: 'hospital', server: 'hapi', sites: ['site-a'], resourceTypes: '*', maxEntries: 100, atomic: true, pseudonymise: false });
    expect(hospital).toMatchObject({ transactions: 'detect', atomicTransactions: true, concurrency: 2, pacing: { decrease: 0.5, incidentMs: 10_000, recoverAfter: 10, leaseMs: 15_000 } });
    expect(hospital.auth.type).toBe('smart-backend-services');
    expect(hospital.auth.type === 'smart-backend-services' && hospital.auth.privateKey.reveal()).toBe(pem.trim());
    expect(() => createAuth(hospital.auth)).not.toThrow();
    expect(hospital.tls?.caFile).toBe(join(dir, 'certs', 'hopital-a-ca.pem'));
    expect(hospital.tls?.ca).toContain('BEGIN CERTIFICATE');

    expect(registry).toMatchObject({ kind: 'registry', server: 'firely', sites: '*', rateLimit: { max: 10, perMs: 1000 }, transactions: true, concurrency: 4, maxEntries: 150 });
    expect(registry.auth.type === 'oauth2-client-credentials' && registry.auth.clientSecret.reveal()).toBe(REGISTRY_SECRET);
    expect(acceptsResourceType(registry, 'Condition')).toBe(true);
    expect(acceptsResourceType(registry, 'AdverseEvent')).toBe(false);

    expect(sponsor).toMatchObject({ kind: 'sponsor', pseudonymise: true, timeoutMs: 30_000, retry: { attempts: 5, baseMs: 500, maxMs: 30_000 } });
    expect(sponsor).toMatchObject({ server: 'medplum', maxEntries: 8, maxConditionalEntries: 8, concurrency: 1, atomicTransactions: 'detect', maxResponseBytes: 16 * 1024 * 1024 });
    expect(sponsor.auth.type === 'bearer' && sponsor.auth.token.reveal()).toBe(SPONSOR_TOKEN);
    expect(sponsor.pseudonymisationKey?.reveal()).toBe(PSEUDONYM_KEY);
    expect(acceptsSite(sponsor, 'site-c')).toBe(true);
    expect(acceptsSite(hospital, 'site-c')).toBe(false);
  });

  it('reads JSON too', () => {
    const path = write('destinations.json', JSON.stringify({ destinations: [{ name: 'h', kind: 'hospital', baseUrl: 'http://127.0.0.1:8080/fhir/', sites: ['site-b'], auth: { type: 'none' } }] }));
    const [h] = loadDestinations(path, {});
    expect(h).toMatchObject({ baseUrl: 'http://127.0.0.1:8080/fhir', pseudonymise: false, transactions: 'detect', auth: { type: 'none' } });
  });

  it('never shows a secret in describe(), JSON or inspect', () => {
    copyFileSync(EXAMPLE, join(dir, 'destinations.yaml'));
    const destinations = loadDestinations(join(dir, 'destinations.yaml'), env);
    const secrets = [REGISTRY_SECRET, SPONSOR_TOKEN, PSEUDONYM_KEY, pem.split('\n')[1]];
    for (const destination of destinations) {
      for (const text of [describe(destination), JSON.stringify(destination), inspect(destination, { depth: 10 }), String(destination.pseudonymisationKey)]) {
        for (const secret of secrets) expect(text).not.toContain(secret);
      }
    }
    expect(describe(destinations[2])).toBe(
      "sponsor 'sponsor-edc' (medplum) https://fhir.sponsor.example/ldccrt-hcc-p2, all sites, all types, auth bearer, pseudonymised, 8 entries/transaction, transactions true, concurrency 1",
    );
    expect(describe(destinations[1])).toContain('auth oauth2-client-credentials via https://login.registry.example');
    expect(inspect(destinations[1].auth)).toContain('Secret(env TB_REGISTRY_CLIENT_SECRET)');
  });

  it('rejects a secret written inline, naming file, line and key but not the value', () => {
    const path = write('inline.yaml', MINIMAL(`    auth:
      type: bearer
      token: test-only-inline-token
`));
    const error = loadError(path);
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]).toMatchObject({ line: 9, key: 'destinations.0.auth.token', destination: 'sponsor' });
    expect(error.message).toMatch(/inline\.yaml:9: destinations\.0\.auth\.token \(destination 'sponsor'\): a secret must be \{ env: NAME \} or \{ file: path \}/);
    expect(error.message).not.toContain('test-only-inline-token');
  });

  it('rejects inline secrets in every secret field', () => {
    const cases = [
      'auth: { type: basic, username: u, password: test-only-pw }',
      'auth: { type: oauth2-client-credentials, tokenUrl: "https://a.example/t", clientId: c, clientSecret: test-only-cs }',
      'auth: { type: smart-backend-services, tokenUrl: "https://a.example/t", clientId: c, alg: RS384, kid: k, scope: s, privateKey: "-----BEGIN PRIVATE KEY-----" }',
    ];
    for (const auth of cases) {
      const error = loadError(write('case.yaml', MINIMAL(`    ${auth}\n`)));
      expect(error.message).toMatch(/auth\.(password|clientSecret|privateKey).*a secret must be/);
      expect(error.message).not.toMatch(/test-only|BEGIN/);
    }
    const error = loadError(write('key.yaml', `destinations:
  - { name: s, kind: sponsor, baseUrl: "https://s.example", sites: "*", pseudonymisationKey: test-only-inline-key, auth: { type: none } }
`));
    expect(error.message).toMatch(/key\.yaml:2: destinations\.0\.pseudonymisationKey.*a secret must be/);
    expect(error.message).not.toContain('test-only-inline-key');
  });

  it('names the file and key of a CA bundle that is missing or holds no certificate', () => {
    writeFileSync(join(dir, 'not-a-cert.pem'), 'hello\n');
    const path = write('tls.yaml', MINIMAL(`    pseudonymise: false
    tls: { caFile: certs/absent.pem }
    auth: { type: none }
  - name: other
    kind: hospital
    baseUrl: https://other.example/fhir
    sites: "*"
    tls: { caFile: not-a-cert.pem }
    auth: { type: none }
`));
    const messages = loadError(path, {}).issues.map((i) => `${i.file.split('/').pop()}:${i.line} ${i.key}: ${i.message}`);
    expect(messages).toContainEqual(expect.stringMatching(/^tls\.yaml:\d+ destinations\.0\.tls\.caFile: cannot read CA bundle .*certs\/absent\.pem \(ENOENT\)$/));
    expect(messages).toContainEqual(expect.stringMatching(/^tls\.yaml:\d+ destinations\.1\.tls\.caFile: .*not-a-cert\.pem holds no PEM certificate$/));
  });

  it('names destination and field when a secret cannot be resolved, never its value', () => {
    const path = write('missing.yaml', MINIMAL(`    auth:
      type: bearer
      token: { file: secrets/absent-token }
`));
    const error = loadError(path, {});
    const messages = error.issues.map((i) => `${i.destination} ${i.key}: ${i.message}`);
    expect(messages).toContain('sponsor destinations.0.pseudonymisationKey: environment variable TB_SPONSOR_PSEUDONYM_KEY is not set');
    expect(messages.find((m) => m.includes('auth.token'))).toMatch(/^sponsor destinations\.0\.auth\.token: cannot read secret file .*secrets\/absent-token \(ENOENT\)$/);
  });

  it('checks the private key at load, without quoting it', async () => {
    const ec = await exportPKCS8((await generateKeyPair('ES256', { extractable: true })).privateKey);
    writeFileSync(join(dir, 'secrets', 'wrong.pem'), ec);
    const path = write('key.yaml', `destinations:
  - name: h
    kind: hospital
    baseUrl: https://h.example/fhir
    sites: [site-a]
    auth: { type: smart-backend-services, tokenUrl: "https://h.example/token", clientId: c, alg: ES384, kid: k, scope: system/*.write, privateKey: { file: secrets/wrong.pem } }
`);
    const error = loadError(path);
    expect(error.message).toMatch(/key\.yaml:6: destinations\.0\.auth\.privateKey \(destination 'h'\): the key from file .*wrong\.pem ES384 needs an EC P-384 key/);
    expect(error.message).not.toContain(ec.split('\n')[1]);
  });

  it('reports schema errors with line and key', () => {
    const path = write('bad.yaml', `destinations:
  - name: reg
    kind: registery
    baseUrl: https://user:test-only-pw@r.example/fhir
    sites: [site-a]
    maxEntries: 0
    transactions: maybe
    colour: blue
    auth: { type: kerberos }
`);
    const error = loadError(path);
    const byKey = Object.fromEntries(error.issues.map((i) => [i.key, i]));
    expect(byKey['destinations.0.kind']).toMatchObject({ line: 3, message: 'must be one of hospital, registry, sponsor' });
    expect(byKey['destinations.0.maxEntries']).toMatchObject({ line: 6 });
    expect(byKey['destinations.0.transactions']).toMatchObject({ line: 7 });
    expect(byKey['destinations.0.colour']).toMatchObject({ line: 8, message: "unknown key 'colour'" });
    expect(byKey['destinations.0.auth.type']?.line ?? byKey['destinations.0.auth']?.line).toBe(9);
  });

  it('refuses credentials in URLs, clear text to remote hosts and duplicate names', () => {
    const path = write('urls.yaml', `destinations:
  - { name: a, kind: hospital, baseUrl: "https://user:test-only-pw@a.example/fhir", sites: "*", auth: { type: none } }
  - { name: a, kind: hospital, baseUrl: "http://b.example/fhir", sites: "*", auth: { type: none } }
`);
    const error = loadError(path);
    expect(error.message).toContain("urls.yaml:2: destinations.0.baseUrl (destination 'a'): must not contain credentials");
    expect(error.message).toContain("urls.yaml:3: destinations.1.baseUrl (destination 'a'): must use https");
    expect(error.message).toContain('urls.yaml:3: destinations.1.name');
    expect(error.message).not.toContain('test-only-pw');
  });

  it('takes plain http to a remote host only with allowHttp, and never for a token URL', () => {
    const ok = write('http-ok.yaml', `destinations:
  - { name: compose, kind: hospital, baseUrl: "http://hospital-fhir:8080/fhir", allowHttp: true, sites: "*", auth: { type: none } }
`);
    expect(loadDestinations(ok, {})[0].baseUrl).toBe('http://hospital-fhir:8080/fhir');
    const bad = write('http-token.yaml', `destinations:
  - name: compose
    kind: hospital
    baseUrl: http://hospital-fhir:8080/fhir
    allowHttp: true
    sites: "*"
    auth: { type: oauth2-client-credentials, tokenUrl: "http://auth:9000/token", clientId: x, clientSecret: { env: TB_X } }
`);
    expect(loadError(bad, { TB_X: 'y' }).message).toMatch(/destinations\.0\.auth\.tokenUrl .*must use https/);
  });

  it('requires a pseudonymisation key for sponsors unless pseudonymise is false', () => {
    const noKey = write('nokey.yaml', `destinations:
  - { name: s, kind: sponsor, baseUrl: "https://s.example", sites: "*", auth: { type: none } }
`);
    expect(loadError(noKey).message).toMatch(/nokey\.yaml:2: destinations\.0\.pseudonymise \(destination 's'\): pseudonymised destinations need pseudonymisationKey/);
    const optOut = write('optout.yaml', `destinations:
  - { name: s, kind: sponsor, baseUrl: "https://s.example", sites: "*", pseudonymise: false, auth: { type: none } }
`);
    expect(loadDestinations(optOut, {})[0].pseudonymise).toBe(false);
    const short = write('short.yaml', MINIMAL('    auth: { type: none }\n'));
    expect(loadError(short, { TB_SPONSOR_PSEUDONYM_KEY: 'too-short' }).message).toMatch(/too short/);
  });

  it('reports YAML syntax errors with their line', () => {
    const error = loadError(write('syntax.yaml', 'destinations:\n  - name: a\n   kind: [hospital\n'));
    expect(error.issues[0].line).toBeGreaterThan(1);
    expect(error.message).toMatch(/syntax\.yaml:\d+: \(top level\): syntax: /);
  });

  it('Secret prints as [secret]', () => {
    const secret = new Secret('test-only-value', 'env X');
    expect(`${secret}`).toBe('[secret]');
    expect(JSON.stringify({ secret })).toBe('{"secret":"[secret]"}');
    expect(inspect({ secret })).not.toContain('test-only-value');
  });
});

group('loadDestinations messages', () => {
  it('says once what sites must be', () => {
    const error = loadError(write('sites.yaml', `destinations:
  - { name: h, kind: hospital, baseUrl: "https://h.example", sites: site-a, auth: { type: none } }
`));
    expect(error.issues.map((i) => `${i.line} ${i.key}: ${i.message}`)).toEqual(['2 destinations.0.sites: must be "*" or a list of site ids']);
  });
});
