import { evalFhirPathTyped, parseFhirPath } from '@medplum/core';
import { describe, expect, it } from 'vitest';
import type { SourceRecord } from '../source/record.ts';
import { EvalContext, toTyped } from './expression.ts';
import { compileFast, Unsupported } from './fast-path.ts';

const EXPRESSIONS = [
  'AETERM',
  "AETERM.upper() = 'NAUSEA'",
  "AETERM.lower()",
  "USUBJID + '/AE/' + AESEQ",
  "USUBJID & '/' & MISSING",
  "MISSING + 'x'",
  "AETOXGR.toInteger() + 1",
  "AETOXGR.toInteger() * 2",
  "AETOXGR.toDecimal()",
  "AETERM.toDecimal()",
  "AETOXGR.toInteger() >= 3",
  "AETOXGR = '3'",
  "AETOXGR != '3'",
  "MISSING = '3'",
  "MISSING.exists()",
  "AETERM.exists()",
  "MISSING.empty()",
  "AETERM.exists() and MISSING.exists()",
  "AETERM.exists() or MISSING.exists()",
  "MISSING.exists().not()",
  "iif(AETOXGR.toInteger() >= 3, 'severe', 'mild')",
  "iif(MISSING.exists(), 'a')",
  "AETERM.contains('aus')",
  "AETERM.startsWith('Na')",
  "AETERM.endsWith('ea')",
  "AETERM.substring(1, 3)",
  "AETERM.substring(2)",
  "AETERM.replace('a', 'o')",
  "%site",
  "%recordKey",
  "%row",
  "%end.exists()",
  "iif(%end.exists(), 'completed', 'in-progress')",
  "%grade",
  "%subject.DS.where(DSDECOD = 'DEATH').DSSTDTC.first()",
  "%subject.DS.DSSTDTC.last()",
  "%subject.DS.count()",
  "%subject.AE.exists(AETERM = 'Nausea')",
  "%subject.NOPE.DSSTDTC.first()",
  "%trialId + '-' + AESEQ",
];

const fields = { USUBJID: 'S-1', AESEQ: '4', AETERM: 'Nausea', AETOXGR: '3' };
const record: SourceRecord = { site: 'site-x', file: 'ae.csv', row: 7, type: 'AE', subject: 'S-1', key: 'K-7', fields };
const others: SourceRecord[] = [
  { ...record, type: 'DS', row: 8, fields: { DSDECOD: 'LAST CONTACT', DSSTDTC: '2017-01-01' } },
  { ...record, type: 'DS', row: 9, fields: { DSDECOD: 'DEATH', DSSTDTC: '2017-02-01' } },
];

function context(): EvalContext {
  const ctx = new EvalContext(record, [record, ...others], new Map([['trialId', toTyped('T1')!]]));
  ctx.declared = ['end', 'grade'];
  ctx.setLet('grade', '3');
  return ctx;
}

describe('FHIRPath fast path', () => {
  it.each(EXPRESSIONS)('agrees with @medplum/core on %s', (expression) => {
    const atom = parseFhirPath(expression);
    const fast = compileFast(atom);
    const ctx = context();
    const general = evalFhirPathTyped(atom, ctx.input, ctx.fhirPathContext.variables).map((t) => t.value);
    expect(fast, 'expression should compile to the fast path').toBeDefined();
    let result: unknown[];
    try {
      result = fast!(ctx);
    } catch (err) {
      // Outside the subset at run time: the general engine answers, which is also correct.
      expect(err).toBeInstanceOf(Unsupported);
      return;
    }
    expect(result).toEqual(general);
  });

  it('leaves expressions outside the subset to the general engine', () => {
    for (const expression of ["AETERM is string", "AETERM.matches('N.*')", "-AESEQ.toInteger()", "(AETERM | USUBJID).count()", 'AETERM[0]']) {
      expect(compileFast(parseFhirPath(expression)), expression).toBeUndefined();
    }
  });
});
