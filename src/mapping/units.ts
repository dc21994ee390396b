import ucum from '@lhncbc/ucum-lhc';

export const UCUM = 'http://unitsofmeasure.org';

interface UcumUtils {
  validateUnitString(unit: string): { status: string; ucumCode?: string; msg: string[] };
  convertUnitTo(from: string, value: number, to: string): { status: string; toVal?: number; msg: string[] };
}

let utils: UcumUtils | undefined;
function ucumUtils(): UcumUtils {
  utils ??= (ucum as unknown as { UcumLhcUtils: { getInstance(): UcumUtils } }).UcumLhcUtils.getInstance();
  return utils;
}

export class UnitError extends Error {}

/** The UCUM code of a unit as a source writes it (case and synonyms such as `GY` are resolved). */
export function ucumCode(unit: string): string {
  const result = ucumUtils().validateUnitString(unit.trim());
  if (result.status !== 'valid' || !result.ucumCode) {
    throw new UnitError(`'${unit}' is not a UCUM unit${result.msg.length ? ` (${result.msg[0]})` : ''}`);
  }
  return result.ucumCode;
}

const factors = new Map<string, number>();

/**
 * Factor that converts a value in `from` to `to` (both UCUM), computed once per pair: conversion is a hot path
 * for dose fields, and UCUM parsing is not.
 */
export function conversionFactor(from: string, to: string): number {
  const pair = `${from}\u0000${to}`;
  let factor = factors.get(pair);
  if (factor === undefined) {
    if (from === to) factor = 1;
    else {
      const result = ucumUtils().convertUnitTo(from, 1, to);
      if (result.status !== 'succeeded' || result.toVal === undefined) {
        throw new UnitError(`cannot convert ${from} to ${to}${result.msg.length ? ` (${result.msg[0]})` : ''}`);
      }
      factor = result.toVal;
    }
    factors.set(pair, factor);
  }
  return factor;
}

/** Multiplies without binary noise (60 Gy → 6000 cGy, not 6000.000000000001). */
export function convert(value: number, factor: number): number {
  return factor === 1 ? value : Number((value * factor).toPrecision(12));
}
