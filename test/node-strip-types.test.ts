import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);

async function modules(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await modules(path)));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') && !entry.name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

describe('every module under src/ loads in Node itself', () => {
  // Tests run through vitest's transform, which accepts TypeScript that Node's type stripping refuses
  // (non-erasable syntax, some expressions it cannot parse). The CLI runs on Node alone: import each module there.
  it('imports without a syntax or resolution error', async () => {
    const files = (await modules('src')).sort();
    expect(files.length).toBeGreaterThan(50);
    const script = `for (const f of ${JSON.stringify(files.map((f) => pathToFileURL(f).href))}) { try { await import(f); } catch (e) { console.log(f + ': ' + e.message); process.exitCode = 1; } } process.exit();`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]).catch((e: { stdout: string }) => e);
    expect(stdout.trim()).toBe('');
  });
});
