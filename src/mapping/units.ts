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

/**
 * Longest unit text parsed. UCUM parsing is superlinear (a 60 KB unit took seconds) and cannot be interrupted,
 * so the bound comes before it starts; real units are a few characters (`mL/min/{1.73_m2}` is 16).
 */
export const MAX_UNIT_LENGTH = 64;
/** Distinct units and unit pairs remembered; a hostile export must not grow them without bound. */
export const MAX_CACHED_UNITS = 500;

/** Why a unit is refused. The message never quotes the unit: it may come from a record (a name in a unit column). */
export class UnitError extends Error {
  /** The library's own explanation, which quotes the unit: only for units a mapping file gives. */
  readonly detail: string | undefined;
  constructor(message: string, detail?: string) {
    super(message);
    this.detail = detail;
  }
}

/** A map that forgets its least recently used entry past `max`. */
class Lru<V> {
  private readonly entries = new Map<string, V>();
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }
  get(key: string): V | undefined {
    const value = this.entries.get(key);
    if (value !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }
  set(key: string, value: V): void {
    this.entries.delete(key);
    this.entries.set(key, value);
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!);
  }
  get size(): number {
    return this.entries.size;
  }
}

/**
 * Runs a call of the unit library with console output held back: it logs the unit it could not parse on
 * stdout (a patient's name typed in a unit column would reach the worker's log). Calls are synchronous, so
 * nothing else writes while the console is swapped.
 */
function quietly<T>(call: () => T): T {
  const saved = { log: console.log, info: console.info, warn: console.warn, error: console.error, debug: console.debug };
  const discard = () => undefined;
  Object.assign(console, { log: discard, info: discard, warn: discard, error: discard, debug: discard });
  try {
    return call();
  } finally {
    Object.assign(console, saved);
  }
}

type Parsed = { code: string } | { error: UnitError };
const codes = new Lru<Parsed>(MAX_CACHED_UNITS);

function parseUnit(unit: string): Parsed {
  if (unit.length > MAX_UNIT_LENGTH) return { error: new UnitError(`unit is ${unit.length} characters long, over the limit of ${MAX_UNIT_LENGTH}`) };
  const result = quietly(() => ucumUtils().validateUnitString(unit));
  if (result.status !== 'valid' || !result.ucumCode) return { error: new UnitError('not a UCUM unit', result.msg[0]) };
  return { code: result.ucumCode };
}

/** The UCUM code of a unit as a source writes it (case and synonyms such as `GY` are resolved). */
export function ucumCode(unit: string): string {
  const text = unit.trim();
  let parsed = codes.get(text);
  if (!parsed) {
    parsed = parseUnit(text);
    codes.set(text, parsed);
  }
  if ('error' in parsed) throw parsed.error;
  return parsed.code;
}

const factors = new Lru<number | UnitError>(MAX_CACHED_UNITS);

/**
 * Factor that converts a value in `from` to `to` (both UCUM), computed once per pair: conversion is a hot path
 * for dose fields, and UCUM parsing is not.
 */
export function conversionFactor(from: string, to: string): number {
  if (from === to) return 1;
  const pair = `${from}\u0000${to}`;
  let factor = factors.get(pair);
  if (factor === undefined) {
    const result = from.length > MAX_UNIT_LENGTH || to.length > MAX_UNIT_LENGTH ? undefined : quietly(() => ucumUtils().convertUnitTo(from, 1, to));
    factor = result?.status === 'succeeded' && result.toVal !== undefined ? result.toVal : new UnitError(`cannot be converted to ${to}`, result?.msg[0]);
    factors.set(pair, factor);
  }
  if (factor instanceof UnitError) throw factor;
  return factor;
}

/** Units parsed and unit pairs remembered (for tests: both stay bounded). */
export function cachedUnits(): { units: number; pairs: number } {
  return { units: codes.size, pairs: factors.size };
}

/** Multiplies without binary noise (60 Gy → 6000 cGy, not 6000.000000000001). */
export function convert(value: number, factor: number): number {
  return factor === 1 ? value : Number((value * factor).toPrecision(12));
}
