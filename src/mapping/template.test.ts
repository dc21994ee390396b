import { describe, expect, it } from 'vitest';
import type { SourceRecord } from '../source/record.ts';
import { EvalContext } from './expression.ts';
import { compileNode, type CompileEnv } from './template.ts';

function compile(node: unknown) {
  const issues: string[] = [];
  const env: CompileEnv = {
    constants: new Map(),
    translations: new Map(),
    rules: new Set(),
    dates: { formats: ['dd.MM.yyyy'] },
    issue: (path, message) => issues.push(`${path.join('.')}: ${message}`),
  };
  return { producer: compileNode(env, ['t'], node), issues };
}

const ctxFor = (fields: Record<string, string>) => {
  const record: SourceRecord = { site: 's', file: 'f.csv', row: 2, type: 'AE', subject: 'S1', key: 'K1', fields };
  return new EvalContext(record, [record], new Map());
};

describe('$date offset', () => {
  it('moves the parsed date by a calendar offset at its own precision', () => {
    expect(compile({ $date: 'START', offset: '28 days' }).producer(ctxFor({ START: '08.05.2016' }))).toBe('2016-06-05');
    expect(compile({ $date: 'START', offset: "-1 'mo'" }).producer(ctxFor({ START: '2016-03-31' }))).toBe('2016-02-29');
    expect(compile({ $date: 'START', offset: '1 year' }).producer(ctxFor({ START: '2016-03' }))).toBe('2017-03');
  });

  it('refuses an offset it cannot read when the mapping compiles', () => {
    expect(compile({ $date: 'START', offset: '28 fortnights' }).issues).toEqual([expect.stringMatching(/^t\.offset: expected an offset like '28 days'/)]);
  });

  it('rejects a finer offset than the date has, naming the units', () => {
    expect(() => compile({ $date: 'START', offset: '3 days' }).producer(ctxFor({ START: '2016-03' }))).toThrow(/cannot add days to a date of month precision/);
  });
});
