/**
 * The mapping benchmark compares the engine with a hand-written mapper and a JSONata mapper of site C, and refuses
 * to time them unless all three give the same bundles on the sample. This keeps them the same as the engine
 * changes (a Provenance change once left `npm run bench` failing without any test noticing).
 */
import { expect, it } from 'vitest';
import { subjectBundle } from '../src/bundle/transaction.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { mapRecords } from '../src/mapping/engine.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { readSourceRecords } from '../src/mapping/records.ts';
import { loadMeddraMap, mapSiteC } from '../bench/handwritten-site-c.ts';
import { jsonataMapper } from '../bench/jsonata-site-c.ts';

const RECORDED = '2025-01-01T00:00:00Z';

it('the benchmark mappers of site C give the engine bundles byte for byte on the sample', async () => {
  const mapping = await compileMapping(await loadMapping('mappings/site-c.yaml'));
  const { records } = await readSourceRecords(mapping, ['examples/site-c']);
  const engine = mapRecords(mapping, records).subjects.map((s) => JSON.stringify(subjectBundle(mapping, s, { recorded: RECORDED })));
  expect(engine.length).toBeGreaterThan(10);
  const meddra = loadMeddraMap();
  const handWritten = mapSiteC(records, RECORDED, meddra).map((b) => JSON.stringify(b));
  const jsonata = (await (await jsonataMapper(meddra)).map(records, RECORDED)).map((b) => JSON.stringify(b));
  expect(handWritten).toEqual(engine);
  expect(jsonata).toEqual(engine);
});
