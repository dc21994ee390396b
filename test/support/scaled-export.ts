/**
 * Larger synthetic exports for load and fault runs: the SDTM sample site (examples/site-c, 14 subjects,
 * ~470 records with its planted bad rows) copied `copies` times, each copy's subjects renamed
 * (`USUBJID` + `-<tag>R<n>`), so every copy maps to new subjects, new business identifiers and new job ids.
 * Files are written under a directory the caller owns (a temporary one), never into the repository.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';

export const SITE_C_DIR = 'examples/site-c';
export const SITE_C_FILES = ['ae.csv', 'dm.csv', 'ds.csv', 'ex.csv', 'pr.csv', 'rs.csv'] as const;

interface CsvFile {
  readonly name: string;
  readonly header: string[];
  readonly rows: Record<string, string>[];
}

let sample: Promise<CsvFile[]> | undefined;

function readSample(): Promise<CsvFile[]> {
  sample ??= Promise.all(
    SITE_C_FILES.map(async (name) => {
      let text = await readFile(join(SITE_C_DIR, name), 'utf8');
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      const header = (parse(text, { to_line: 1 }) as string[][])[0].map((c) => c.trim());
      const rows = parse(text, { columns: (h: string[]) => h.map((c) => c.trim()), skip_empty_lines: true, relax_quotes: true }) as Record<string, string>[];
      return { name, header, rows };
    }),
  );
  return sample;
}

/** Writes site-c × `copies` into `dir` (created); `tag` keeps subjects of different calls apart. Resolves the rows written. */
export async function writeScaledSiteC(dir: string, copies: number, tag = ''): Promise<number> {
  const files = await readSample();
  await mkdir(dir, { recursive: true });
  let rows = 0;
  for (const f of files) {
    const out: string[][] = [];
    for (let c = 1; c <= copies; c++) {
      const suffix = `-${tag}R${c}`;
      for (const r of f.rows) out.push(f.header.map((h) => (h === 'USUBJID' && r[h] ? `${r[h]}${suffix}` : (r[h] ?? ''))));
    }
    rows += out.length;
    await writeFile(join(dir, f.name), stringify(out, { header: true, columns: f.header }));
  }
  return rows;
}
