import { DateTime } from 'luxon';

/** A parsed source date, kept at the precision the source had (a `2016-03` stays a month). */
export type DatePrecision = 'year' | 'month' | 'day' | 'time';

export interface ParsedDate {
  /** FHIR date/dateTime text. */
  readonly value: string;
  readonly precision: DatePrecision;
}

export interface DateParseOptions {
  /** Luxon formats tried after ISO 8601. */
  readonly formats?: readonly string[];
  /** IANA zone for date-times without an offset. */
  readonly timezone?: string;
}

const ISO_PARTIAL = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** Why a date is not a date, or undefined when year, month and day exist on the calendar. */
function calendarProblem(year: number, month?: number, day?: number): string | undefined {
  if (month !== undefined && (month < 1 || month > 12)) return `impossible date: month ${month}`;
  if (month !== undefined && day !== undefined && (day < 1 || day > daysIn(year, month))) {
    return `impossible date: day ${day} of ${year}-${String(month).padStart(2, '0')}`;
  }
  return undefined;
}

export class DateFormatError extends Error {}

interface SimpleFormat {
  readonly pattern: RegExp;
  readonly parts: ('y' | 'M' | 'd')[];
}

const simpleFormats = new Map<string, SimpleFormat | null>();

/**
 * Day-first and similar all-numeric date formats (`dd/MM/yyyy`, `M/d/yyyy`, `MM/yyyy`) as one regular
 * expression, built once per format: Luxon's format parser rebuilds its token machine on every call, which
 * dominated mapping time on such sites. Other formats go to Luxon.
 */
function simpleFormat(format: string): SimpleFormat | null {
  let cached = simpleFormats.get(format);
  if (cached !== undefined) return cached;
  const parts: ('y' | 'M' | 'd')[] = [];
  let source = '';
  let ok = true;
  let variableBefore = false;
  for (const token of format.match(/yyyy|MM|dd|M|d|[^A-Za-z]+|[A-Za-z]+/g) ?? []) {
    if (token === 'yyyy' || token === 'MM' || token === 'dd' || token === 'M' || token === 'd') {
      // `Md` has no separator between two one-or-two-digit parts: ambiguous, and a chain of them backtracks
      // exponentially on a JavaScript RegExp. Such formats go to Luxon.
      if (variableBefore) ok = false;
      variableBefore = token.length === 1;
      parts.push(token[0] as 'y' | 'M' | 'd');
      source += token === 'yyyy' ? '(\\d{4})' : token.length === 2 ? '(\\d{2})' : '(\\d{1,2})';
    } else if (/^[^A-Za-z]+$/.test(token)) {
      variableBefore = /^\d+$/.test(token) && variableBefore;
      source += token.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    } else {
      ok = false;
    }
  }
  cached = ok && parts.includes('y') ? { pattern: new RegExp(`^${source}$`), parts } : null;
  simpleFormats.set(format, cached);
  return cached;
}

function precisionOf(format: string): DatePrecision {
  const tokens = format.replace(/'[^']*'/g, '');
  if (/[Hhms]/.test(tokens)) return 'time';
  if (/d/.test(tokens)) return 'day';
  if (/M|L/.test(tokens)) return 'month';
  return 'year';
}

const FHIR_FORMAT: Record<Exclude<DatePrecision, 'time'>, string> = { year: 'yyyy', month: 'yyyy-MM', day: 'yyyy-MM-dd' };

/**
 * Parses a source date. ISO 8601 (including partial `YYYY` and `YYYY-MM`) is always accepted; declared formats
 * follow. A date-time needs an offset or the declared timezone: FHIR requires one, and guessing would shift events.
 * Throws DateFormatError with a sentence for the engineer.
 */
export function parseSourceDate(text: string, options: DateParseOptions = {}): ParsedDate {
  const value = text.trim();
  const iso = ISO_PARTIAL.exec(value);
  if (iso) {
    const [, y, m, d] = iso;
    const problem = calendarProblem(Number(y), m ? Number(m) : undefined, d ? Number(d) : undefined);
    if (problem) throw new DateFormatError(problem);
    return { value, precision: d ? 'day' : m ? 'month' : 'year' };
  }
  const isoTime = ISO_TIME.exec(value);
  if (isoTime) {
    const [, y, mo, d, h, mi, s, frac, offset] = isoTime;
    const problem = calendarProblem(Number(y), Number(mo), Number(d));
    if (problem) throw new DateFormatError(problem);
    if (Number(h) > 23 || Number(mi) > 59 || (s !== undefined && Number(s) > 59)) throw new DateFormatError('impossible time of day');
    const local = `${y}-${mo}-${d}T${h}:${mi}:${s ?? '00'}${frac ?? ''}`;
    if (offset) {
      const normalized = offset === 'Z' ? 'Z' : offset.length === 5 ? `${offset.slice(0, 3)}:${offset.slice(3)}` : offset;
      return { value: `${local}${normalized}`, precision: 'time' };
    }
    if (!options.timezone) throw new DateFormatError('date-time without timezone, and the mapping declares none');
    const dt = DateTime.fromISO(local, { zone: options.timezone });
    if (!dt.isValid) throw new DateFormatError(`cannot place the date-time in timezone ${options.timezone}: ${dt.invalidExplanation}`);
    return { value: dt.toISO({ suppressMilliseconds: !frac }) ?? local, precision: 'time' };
  }
  for (const format of options.formats ?? []) {
    const simple = simpleFormat(format);
    if (simple) {
      const match = simple.pattern.exec(value);
      if (!match) continue;
      const at: Partial<Record<'y' | 'M' | 'd', number>> = {};
      simple.parts.forEach((part, i) => (at[part] = Number(match[i + 1])));
      const problem = calendarProblem(at.y!, at.M, at.d);
      if (problem) throw new DateFormatError(`impossible date (${format})`);
      const pad = (n: number) => String(n).padStart(2, '0');
      if (at.d !== undefined && at.M !== undefined) return { value: `${at.y}-${pad(at.M)}-${pad(at.d)}`, precision: 'day' };
      if (at.M !== undefined) return { value: `${at.y}-${pad(at.M)}`, precision: 'month' };
      return { value: String(at.y), precision: 'year' };
    }
    const precision = precisionOf(format);
    const dt = DateTime.fromFormat(value, format, { zone: options.timezone ?? 'UTC', setZone: true });
    if (!dt.isValid) {
      // Luxon calls 30/02/2016 "unit out of range": the shape matched, the day does not exist.
      if (dt.invalidReason === 'unit out of range') throw new DateFormatError(`impossible date (${format})`);
      continue;
    }
    if (precision === 'time') {
      if (!options.timezone && !/Z|ZZ|ZZZ/.test(format)) {
        throw new DateFormatError('date-time without timezone, and the mapping declares none');
      }
      return { value: dt.toISO({ suppressMilliseconds: true }) ?? value, precision };
    }
    return { value: dt.toFormat(FHIR_FORMAT[precision]), precision };
  }
  const tried = ['ISO 8601', ...(options.formats ?? [])].join(', ');
  throw new DateFormatError(`not a date in any declared format (${tried})`);
}
