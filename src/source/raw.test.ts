import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { firstInvalidUtf8, overlongField, readSourceText, SourceFileError } from './raw.ts';

async function file(content: Buffer): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'raw-'));
  await writeFile(join(dir, 'f.csv'), content);
  return join(dir, 'f.csv');
}

describe('firstInvalidUtf8', () => {
  it('finds stray, truncated, overlong and surrogate sequences, and passes well-formed text', () => {
    expect(firstInvalidUtf8(Buffer.from('añ€😀', 'utf8'))).toBe(-1);
    expect(firstInvalidUtf8(Buffer.from([0x61, 0xe9, 0x62]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from([0x61, 0xe2, 0x82]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from([0xc0, 0xaf]))).toBe(0);
    expect(firstInvalidUtf8(Buffer.from([0xe0, 0x80, 0xaf]))).toBe(0);
    expect(firstInvalidUtf8(Buffer.from([0x41, 0xed, 0xa0, 0x80]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from([0xf4, 0x90, 0x80, 0x80]))).toBe(0);
  });
});

describe('readSourceText', () => {
  it('lets a byte-order mark override the declared encoding and digests the bytes as read', async () => {
    const bytes = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('a,b\n1,é\n', 'utf16le')]);
    const read = await readSourceText(await file(bytes), 'latin1');
    expect(read).toMatchObject({ text: 'a,b\n1,é\n', encoding: 'utf-16le', bytes: bytes.length });
    expect(read.digest).toMatch(/^[0-9a-f]{64}$/);
  });

  it('names unknown encodings and refuses oversized files before reading them', async () => {
    await expect(readSourceText(await file(Buffer.from('a\n')), 'klingon')).rejects.toThrow(/^f\.csv: unknown encoding 'klingon'/);
    const big = readSourceText(await file(Buffer.alloc(4096, 0x61)), 'utf-8', { maxFileBytes: 1000 });
    await expect(big).rejects.toBeInstanceOf(SourceFileError);
    await expect(big).rejects.toMatchObject({ tooLarge: true });
  });

  it('reads Latin-1 when declared, and refuses it as UTF-8 naming offset and line', async () => {
    const path = await file(Buffer.from('a,b\n1,Gen\xe8ve\n', 'latin1'));
    expect((await readSourceText(path, 'latin1')).text).toBe('a,b\n1,Genève\n');
    await expect(readSourceText(path)).rejects.toMatchObject({ offset: 9, line: 2 });
  });
});

describe('overlongField', () => {
  it('names the first field over the limit', () => {
    expect(overlongField({ a: 'xx', b: 'xxxx' }, 3)).toEqual({ field: 'b', reason: 'value is 4 characters long, over the limit of 3' });
    expect(overlongField({ a: 'xxx' }, 3)).toBeUndefined();
  });
});
