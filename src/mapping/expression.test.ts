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
  });
});
