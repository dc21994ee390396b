import { createPrivateKey, randomUUID, type JsonWebKey, type KeyObject } from 'node:crypto';
import { SignJWT } from 'jose';
import type { AuthConfig, AuthOptions } from './index.ts';
import { CachedTokenAuth } from './token-cache.ts';

type Config = Extract<AuthConfig, { type: 'smart-backend-services' }>;
export type SmartAlg = Config['alg'];

export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** SMART caps the assertion's lifetime at five minutes; a margin keeps servers with a slow clock happy. */
const ASSERTION_LIFETIME_S = 240;

export interface ParsedKey {
  readonly key: KeyObject;
  /** The JWK's `kid`, when the key came as a JWK that has one. */
  readonly kid?: string;
}

/**
 * Reads a private key (PEM: PKCS#8, PKCS#1 or SEC1; or a private JWK as JSON) and checks it fits the
 * algorithm. Errors describe the key, never quote it.
 */
export function parsePrivateKey(text: string, alg: SmartAlg): ParsedKey {
  const trimmed = text.trim();
  let key: KeyObject;
  let kid: string | undefined;
  if (trimmed.startsWith('{')) {
    let jwk: Record<string, unknown>;
    try {
      jwk = JSON.parse(trimmed) as Record<string, unknown>;
    } catch {
      throw new Error('is neither a PEM private key nor valid JWK JSON');
    }
    if (typeof jwk.d !== 'string') throw new Error('is a JWK without the private part ("d")');
    if (typeof jwk.kid === 'string' && jwk.kid !== '') kid = jwk.kid;
    try {
      key = createPrivateKey({ key: jwk as JsonWebKey, format: 'jwk' });
    } catch {
      throw new Error('is not a usable private JWK');
    }
  } else if (trimmed.startsWith('-----BEGIN')) {
    if (!/-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----/.test(trimmed)) throw new Error('is a PEM block but not a private key');
    if (trimmed.includes('ENCRYPTED PRIVATE KEY')) throw new Error('is an encrypted PEM key (give the decrypted key)');
    try {
      key = createPrivateKey(trimmed);
    } catch {
      throw new Error('is not a usable PEM private key');
    }
  } else {
    throw new Error('is neither a PEM private key nor a JWK');
  }
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (alg === 'RS384') {
    if (type !== 'rsa') throw new Error(`RS384 needs an RSA key, this is ${type} key`);
    if ((details.modulusLength ?? 0) < 2048) throw new Error('RS384 needs an RSA key of at least 2048 bits');
  } else if (type !== 'ec' || details.namedCurve !== 'secp384r1') {
    throw new Error(`ES384 needs an EC P-384 key, this is ${type === 'ec' ? `an EC ${details.namedCurve}` : `a ${type}`} key`);
  }
  return { key, kid };
}

/**
 * SMART Backend Services (SMART App Launch 2, "client-confidential-asymmetric"): a JWT signed with the
 * client's private key authenticates a client_credentials token request.
 */
export class SmartBackendServices extends CachedTokenAuth {
  readonly #config: Config;
  readonly #key: KeyObject;
  readonly #kid: string;

  constructor(config: Config, options: AuthOptions = {}) {
    super(config.tokenUrl, options);
    this.#config = config;
    let parsed: ParsedKey;
    try {
      parsed = parsePrivateKey(config.privateKey.reveal(), config.alg);
    } catch (err) {
      throw new Error(`smart-backend-services: the private key ${(err as Error).message}`);
    }
    const kid = config.kid ?? parsed.kid;
    if (!kid) throw new Error('smart-backend-services: no kid (set auth.kid or give a JWK with a kid)');
    this.#key = parsed.key;
    this.#kid = kid;
  }

  /** A fresh client assertion: iss = sub = client id, aud = token URL, random jti, exp ≤ 5 minutes. */
  async assertion(): Promise<string> {
    const { alg, jku, clientId, tokenUrl } = this.#config;
    const now = Math.floor(this.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg, typ: 'JWT', kid: this.#kid, ...(jku ? { jku } : {}) })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(tokenUrl)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(now + ASSERTION_LIFETIME_S)
      .sign(this.#key);
  }

  protected async tokenRequest(): Promise<{ body: URLSearchParams }> {
    const body = new URLSearchParams({
      grant_type: 'client_credentials',
      scope: this.#config.scope,
      client_assertion_type: CLIENT_ASSERTION_TYPE,
      client_assertion: await this.assertion(),
    });
    return { body };
  }

  /** The assertion is signed, not secret, and the key never goes on the wire. */
  protected secrets(): readonly string[] {
    return [];
  }
}
