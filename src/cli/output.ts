import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MappedExport } from '../bundle/map-export.ts';
import { expandInputs } from '../mapping/records.ts';
import { describeProblem, type RecordProblem } from '../source/record.ts';
import { terminalSafe } from '../terminal.ts';

/**
 * Provenance.recorded when the caller gives none: the newest modification time of the inputs. The same export
 * maps to the same bytes, and a changed export gets a new time.
 */
export async function defaultRecorded(inputs: readonly string[]): Promise<string> {
  let newest = 0;
  for (const file of await expandInputs(inputs)) newest = Math.max(newest, (await stat(file)).mtimeMs);
  return new Date(Math.floor(newest / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** Writes bundles (one JSON file each, or one NDJSON file), the summary and the rejects of one export. */
export async function writeMappedExport(out: string, mapped: MappedExport, ndjson: boolean): Promise<string[]> {
  await mkdir(out, { recursive: true });
  const written: string[] = [];
  const site = mapped.summary.site;
  if (ndjson) {
    const path = join(out, `${site}.bundles.ndjson`);
    await writeFile(path, mapped.bundles.map((b) => JSON.stringify(b.bundle)).join('\n') + (mapped.bundles.length ? '\n' : ''));
    written.push(path);
  } else {
    const dir = join(out, site);
    await mkdir(dir, { recursive: true });
    // File names carry a sequence number, not the subject id: outputs get copied to places logs reach.
    for (const [i, { bundle }] of mapped.bundles.entries()) {
      const path = join(dir, `bundle-${String(i + 1).padStart(4, '0')}.json`);
      await writeFile(path, JSON.stringify(bundle, null, 2) + '\n');
      written.push(path);
    }
  }
  const rejects = join(out, `${site}.rejects.ndjson`);
  await writeFile(rejects, mapped.summary.rejects.map((r) => JSON.stringify(r)).join('\n') + (mapped.summary.rejects.length ? '\n' : ''));
  const summary = join(out, `${site}.summary.json`);
  const { rejects: list, ...counts } = mapped.summary;
  await writeFile(summary, JSON.stringify({ ...counts, rejects: list.map(describeProblem) }, null, 2) + '\n');
  written.push(rejects, summary);
  return written;
}

/**
 * A reject as the terminal shows it: the record key only when it does not spell out the subject id (REDCap
 * keys are `record_id:instrument:instance`, and the record id is the subject's).
 */
function terminalProblem(p: RecordProblem): string {
  return p.subject && p.key.includes(p.subject) ? `${p.file} row ${p.row} field ${p.field}: ${p.reason}` : describeProblem(p);
}

/** Human summary for the terminal: counts and reasons, never field values (they may identify a patient), control characters escaped. */
export function formatSummary(mapped: MappedExport): string {
  const s = mapped.summary;
  const lines = [
    `${s.site}: ${s.recordsRead} records read from ${s.files.map((f) => `${f.file} (${f.rows})`).join(', ')}`,
    `  ${s.subjects} subject bundles; resources: ${Object.entries(s.resourcesByType).map(([t, n]) => `${t} ${n}`).join(', ')}`,
    `  ${s.recordsRejected} records rejected`,
  ];
  for (const problem of s.rejects) lines.push(`    ${terminalProblem(problem)}`);
  // File names, record keys and reasons come from the export: control characters are shown, not obeyed.
  return lines.map(terminalSafe).join('\n');
}
