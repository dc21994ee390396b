import { describe, expect, it } from 'vitest';
import type { SourceRecord } from '../source/record.ts';
import { compileExpression, EvalContext, toTyped } from './expression.ts';

const record = (fields: Record<string, string>, type = 'AE'): SourceRecord => ({ site: 's', file: 'f.csv', row: 2, type, subject: 'S1', key: 'K1', fields });

function evaluate(expr: string, fields: Record<string, string>, others: SourceRecord[] = []) {
  const r = record(fields);
  const constants = new Map([['trialId', toTyped('T1')!]]);
  const ctx = new EvalContext(r, [r, ...others], constants);
  return compileExpression(expr, new Map([['trialId', 'T1']])).evaluate(ctx);
}

describe('compileExpression', () => {
  it('reads plain fields directly and treats absent fields as empty', () => {
    expect(evaluate('AETERM', { AETERM: 'Nausea' })).toEqual(['Nausea']);
    expect(evaluate('AETERM', {})).toEqual([]);
  });

  it('evaluates FHIRPath with functions, operators and variables', () => {
    expect(evaluate("AETERM.upper() + '/' + %trialId", { AETERM: 'nausea' })).toEqual(['NAUSEA/T1']);
    expect(evaluate("iif(AETOXGR.toInteger() >= 3, 'severe', 'mild')", { AETOXGR: '3' })).toEqual(['severe']);
    expect(evaluate('%recordKey', {})).toEqual(['K1']);
    expect(evaluate('%row', {})).toEqual([2]);
  });

  it("sees the subject's other records by type through %subject", () => {
    const death = record({ DSDECOD: 'DEATH', DSSTDTC: '2016-05-01' }, 'DS');
    expect(evaluate("%subject.DS.where(DSDECOD = 'DEATH').DSSTDTC", {}, [death])).toEqual(['2016-05-01']);
  });

  it('is a sandbox: JavaScript in an expression is refused when the mapping compiles, not run', () => {
    // It parses as FHIRPath navigation, and no function called exit or require may be called.
    expect(() => evaluate('process.exit(1)', {})).toThrow(/function 'exit\(\)' is not allowed/);
    expect(() => evaluate('require("fs")', {})).toThrow(/function 'require\(\)' is not allowed/);
  });

  it('names the first field an expression reads, for error messages', () => {
    expect(compileExpression("AESTDTC.substring(0, 4)", new Map()).field).toBe('AESTDTC');
    expect(compileExpression("'x' + EXDOSE", new Map()).field).toBe('EXDOSE');
    expect(compileExpression('@2016-05-08 + 28 days', new Map()).field).toBe('@2016-05-08 + 28 days');
    expect(compileExpression('%start + 28 days', new Map()).field).toBe('%start + 28 days');
    expect(compileExpression('AESTDTC.toDate() + 2 weeks', new Map()).field).toBe('AESTDTC');
  });
});

describe('date arithmetic', () => {
  it('adds and subtracts calendar words and UCUM time units, keeping the precision of the date', () => {
    expect(evaluate('@2016-05-08 + 28 days', {})).toEqual(['2016-06-05']);
    expect(evaluate("@2016-05-08 + 28 'd'", {})).toEqual(['2016-06-05']);
    expect(evaluate('@2016-05-08 - 2 weeks', {})).toEqual(['2016-04-24']);
    expect(evaluate("@2016-05-08 + 1 'wk'", {})).toEqual(['2016-05-15']);
    expect(evaluate('@2016-01-31 + 1 month', {})).toEqual(['2016-02-29']);
    expect(evaluate("@2016-05 + 8 'mo'", {})).toEqual(['2017-01']);
    expect(evaluate("@2016 - 1 'a'", {})).toEqual(['2015']);
    expect(evaluate('@2016-02-29 + 1 year', {})).toEqual(['2017-02-28']);
    // @medplum/core turns a date-time literal into UTC; a date-time read from a record keeps its offset.
    expect(evaluate('@2016-05-08T23:30:00+09:00 + 1 hour', {})).toEqual(['2016-05-08T15:30:00.000Z']);
    expect(evaluate('AT + 1 hour', { AT: '2016-05-08T23:30:00+09:00' })).toEqual(['2016-05-09T00:30:00+09:00']);
  });

  it('reads a field or let holding a FHIR date as a date', () => {
    expect(evaluate("START.toDate() + 7 days", { START: '2016-12-28' })).toEqual(['2017-01-04']);
    expect(evaluate('START + 7 days', { START: '2016-12-28' })).toEqual(['2017-01-04']);
  });

  it('refuses what it cannot do with a reason that names the units, not the value', () => {
    expect(() => evaluate('@2016-05 + 10 days', {})).toThrow(/cannot add days to a date of month precision/);
    expect(() => evaluate('START + 7 days', { START: 'soon' })).toThrow(/not a FHIR date or date-time/);
  });

  it('leaves other arithmetic to the engine', () => {
    expect(evaluate('2 + 3', {})).toEqual([5]);
    expect(evaluate("'a' + 'b'", {})).toEqual(['ab']);
  });
});
