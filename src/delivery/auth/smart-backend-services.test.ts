import { generateKeyPair, exportJWK, exportPKCS8, decodeProtectedHeader, jwtVerify, type CryptoKey } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { Secret } from '../destinations.ts';
import { createAuth, type AuthConfig } from './index.ts';
import { CLIENT_ASSERTION_TYPE, parsePrivateKey } from './smart-backend-services.ts';
import { gate, TestTokenServer } from '../../../test/support/token-server.ts';

const CLIENT_ID = 'trialbridge-hospital';
const SCOPE = 'system/Patient.write system/ResearchSubject.write';

let server: TestTokenServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

type Alg = 'RS384' | 'ES384';

/**
 * A SMART token endpoint: verifies the client assertion with the registered public key (signature, iss, sub,
 * aud, exp ≤ 5 min, jti never reused) at the test's clock; answers token-1, token-2, ...
 */
async function startServer(alg: Alg, publicKey: CryptoKey, now: () => number, hold?: Promise<void>) {
  const jtis = new Set<string>();
  const headers: Record<string, unknown>[] = [];
  server = await new TestTokenServer(async (req, call) => {
    await hold;
    const { form } = req;
    if (form.grant_type !== 'client_credentials' || form.client_assertion_type !== CLIENT_ASSERTION_TYPE) {
      return { status: 400, body: { error: 'invalid_request' } };
    }
    try {
      const { payload } = await jwtVerify(form.client_assertion, publicKey, {
        algorithms: [alg],
        issuer: CLIENT_ID,
        subject: CLIENT_ID,
        audience: server!.tokenUrl,
        currentDate: new Date(now()),
        requiredClaims: ['exp', 'jti'],
      });
      if (payload.exp! - Math.floor(now() / 1000) > 300) throw new Error('exp more than 5 minutes ahead');
      if (jtis.has(payload.jti!)) throw new Error('jti reused');
      jtis.add(payload.jti!);
    } catch (err) {
      return { status: 401, body: { error: 'invalid_client', error_description: (err as Error).message } };
    }
    headers.push(decodeProtectedHeader(form.client_assertion));
    if (form.scope !== SCOPE) return { status: 400, body: { error: 'invalid_scope' } };
    return { body: { access_token: `token-${call}`, token_type: 'bearer', expires_in: 300, scope: SCOPE } };
  }).start();
  return { server, headers };
}

function config(tokenUrl: string, alg: Alg, privateKey: string, extra: Partial<{ kid: string; jku: string }> = {}): AuthConfig {
  return {
    type: 'smart-backend-services',
    tokenUrl,
    clientId: CLIENT_ID,
    privateKey: new Secret(privateKey, 'file test'),
    alg,
    scope: SCOPE,
    kid: 'kid' in extra ? extra.kid : 'test-key-1',
    ...(extra.jku ? { jku: extra.jku } : {}),
  };
}

describe('smart-backend-services', () => {
  for (const alg of ['RS384', 'ES384'] as const) {
    describe(alg, () => {
      it('signs an assertion the server verifies, caches the token, refreshes on expiry and on 401', async () => {
        const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
        let now = 1_750_000_000_000;
        const clock = () => now;
        const { server: tokens, headers } = await startServer(alg, publicKey, clock);
        const auth = createAuth(config(tokens.tokenUrl, alg, await exportPKCS8(privateKey), { jku: 'https://trialbridge.example/jwks.json' }), { now: clock, skewMs: 30_000 });

        for (let i = 0; i < 5; i++) expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
        expect(tokens.calls).toBe(1);
        expect(headers[0]).toEqual({ alg, typ: 'JWT', kid: 'test-key-1', jku: 'https://trialbridge.example/jwks.json' });

        now += 300_000 - 30_000; // expires_in 300 s minus the skew
        expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-2' });

        await auth.onUnauthorized({ Authorization: 'Bearer token-2' });
        expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-3' });
        expect(tokens.calls).toBe(3);
      });

      it('reads the key as a private JWK and takes its kid', async () => {
        const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
        const { server: tokens, headers } = await startServer(alg, publicKey, () => 1_750_000_000_000);
        const jwk = JSON.stringify({ ...(await exportJWK(privateKey)), kid: 'jwk-kid' });
        const auth = createAuth(config(tokens.tokenUrl, alg, jwk, { kid: undefined }), { now: () => 1_750_000_000_000 });
        expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
        expect(headers[0]).toEqual({ alg, typ: 'JWT', kid: 'jwk-kid' });
      });
    });
  }

  it('makes concurrent callers share one refresh', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
    const hold = gate();
    const { server: tokens } = await startServer('ES384', publicKey, () => 1_750_000_000_000, hold.promise);
    const auth = createAuth(config(tokens.tokenUrl, 'ES384', await exportPKCS8(privateKey)), { now: () => 1_750_000_000_000 });
    const waiting = Array.from({ length: 10 }, () => auth.headers());
    hold.open();
    expect(new Set((await Promise.all(waiting)).map((h) => h.Authorization))).toEqual(new Set(['Bearer token-1']));
    expect(tokens.calls).toBe(1);
  });

  it('a key the server does not know gives a clear error without the key', async () => {
    const registered = await generateKeyPair('RS384', { extractable: true });
    const other = await generateKeyPair('RS384', { extractable: true });
    const { server: tokens } = await startServer('RS384', registered.publicKey, () => 1_750_000_000_000);
    const pem = await exportPKCS8(other.privateKey);
    const auth = createAuth(config(tokens.tokenUrl, 'RS384', pem), { now: () => 1_750_000_000_000 });
    const error = (await auth.headers().catch((err: Error) => err)) as Error;
    expect(error.message).toMatch(/refused: HTTP 401 invalid_client: signature verification failed/);
    const body = pem.split('\n').slice(1, -2).join('');
    expect(error.message).not.toContain(body.slice(0, 40));
  });

  it('refuses a key that does not fit the algorithm, without quoting it', async () => {
    const ec = await generateKeyPair('ES256', { extractable: true });
    const pem = await exportPKCS8(ec.privateKey);
    expect(() => parsePrivateKey(pem, 'ES384')).toThrow(/ES384 needs an EC P-384 key, this is an EC prime256v1 key/);
    expect(() => parsePrivateKey(pem, 'RS384')).toThrow(/RS384 needs an RSA key/);
    expect(() => parsePrivateKey('not a key', 'RS384')).toThrow(/neither a PEM private key nor a JWK/);
    const publicOnly = JSON.stringify(await exportJWK(ec.publicKey));
    expect(() => parsePrivateKey(publicOnly, 'ES384')).toThrow(/without the private part/);
    expect(() => createAuth(config('https://auth.example/token', 'RS384', pem))).toThrow(/^smart-backend-services: the private key RS384 needs/);
  });
});
