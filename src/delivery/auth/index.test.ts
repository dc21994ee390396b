import { describe, expect, it } from 'vitest';
import { Secret } from '../destinations.ts';
import { createAuth } from './index.ts';

describe('createAuth', () => {
  it('none adds no header', async () => {
    const auth = createAuth({ type: 'none' });
    expect(await auth.headers()).toEqual({});
    await auth.onUnauthorized();
  });

  it('bearer sends the static token', async () => {
    const auth = createAuth({ type: 'bearer', token: new Secret('test-only-token', 'env T') });
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer test-only-token' });
    await auth.onUnauthorized();
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer test-only-token' });
  });

  it('basic sends user and password (UTF-8, RFC 7617)', async () => {
    const auth = createAuth({ type: 'basic', username: 'registry-uploader', password: new Secret('pässword', 'env P') });
    const { Authorization } = await auth.headers();
    expect(Authorization).toBe(`Basic ${Buffer.from('registry-uploader:pässword', 'utf8').toString('base64')}`);
  });

  it('a strategy does not show its secret when logged', async () => {
    const { inspect } = await import('node:util');
    const auth = createAuth({ type: 'bearer', token: new Secret('test-only-token', 'env T') });
    expect(inspect(auth, { depth: 5 })).not.toContain('test-only-token');
    expect(JSON.stringify(auth)).not.toContain('test-only-token');
  });
});
