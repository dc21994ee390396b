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

const MONTH_NAMES = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

/**
 * Why a date is not a date, or undefined when year, month and day exist on the calendar. The sentence names the
 * part that is wrong and the rule it breaks, never the value itself: reasons reach terminals and logs, values
 * only the rejects file.
 */
function calendarProblem(year: number, month?: number, day?: number): string | undefined {
  if (month !== undefined && month === 0) return 'month 0 does not exist (months run 01 to 12)';
  if (month !== undefined && month > 12) return 'the month is past 12 (months run 01 to 12)';
  if (day !== undefined && day === 0) return 'day 0 does not exist (days start at 01)';
  if (month !== undefined && day !== undefined && day > daysIn(year, month)) {
    if (month === 2 && day === 29) return 'February 29 in a year that is not a leap year';
    return `the day is past the end of the month (${MONTH_NAMES[month - 1]} has ${month === 2 ? '28 or 29' : daysIn(2000, month)} days)`;
  }
  return undefined;
}

export class DateFormatError extends Error {}

interface SimpleFormat {
  readonly pattern: RegExp;
  /** The same shape with any number of digits per part: a value it matches has a part of the wrong length. */
  readonly loose: RegExp | undefined;
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
  let loose = '';
  let ok = true;
  // Without a separator between two parts, a loose digit pattern is ambiguous (and slow on long cells).
  let separated = true;
  let partBefore = false;
  let variableBefore = false;
  // Runs of one letter are one token: `MMM` (a month name) is Luxon's, not `MM` followed by `M`.
  for (const token of format.match(/([A-Za-z])\1*|[^A-Za-z]+/g) ?? []) {
    if (token === 'yyyy' || token === 'MM' || token === 'dd' || token === 'M' || token === 'd') {
      // `Md` has no separator between two one-or-two-digit parts: ambiguous, and a chain of them backtracks
      // exponentially on a JavaScript RegExp. Such formats go to Luxon.
      if (variableBefore) ok = false;
      variableBefore = token.length === 1;
      parts.push(token[0] as 'y' | 'M' | 'd');
      source += token === 'yyyy' ? '(\\d{4})' : token.length === 2 ? '(\\d{2})' : '(\\d{1,2})';
      loose += '(\\d*)';
      if (partBefore) separated = false;
      partBefore = true;
    } else if (/^[^A-Za-z]+$/.test(token)) {
      variableBefore = /^\d+$/.test(token) && variableBefore;
      const literal = token.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      source += literal;
      loose += literal;
      partBefore = false;
    } else {
      ok = false;
    }
  }
  cached = ok && parts.includes('y') ? { pattern: new RegExp(`^${source}$`), loose: separated ? new RegExp(`^${loose}$`) : undefined, parts } : null;
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

const PART_NAMES = { y: 'year', M: 'month', d: 'day' } as const;

/** Which part of a value in a numeric format's shape has the wrong number of digits (or none). */
function partLengthProblem(format: string, parts: readonly ('y' | 'M' | 'd')[], shape: RegExpExecArray): string {
  const tokens = format.match(/yyyy|MM|dd|M|d/g) ?? [];
  for (let i = 0; i < parts.length; i++) {
    const digits = shape[i + 1].length;
    const token = tokens[i];
    const name = PART_NAMES[parts[i]];
    if (digits === 0) return `the ${name} part is empty`;
    const fits = token.length === 1 ? digits <= 2 : digits === token.length;
    if (!fits) return `the ${name} part has ${digits} digits where ${token} wants ${token.length === 1 ? '1 or 2' : token.length}`;
  }
  return 'the parts do not fit the format';
}

/** Why Luxon found a unit out of range, from the parts it read (its own explanation quotes the value). */
function luxonProblem(value: string, format: string): string {
  const { result } = DateTime.fromFormatExplain(value, format) as { result?: Partial<Record<'year' | 'month' | 'day' | 'hour' | 'minute', number>> };
  if (result?.hour !== undefined && result.hour > 23) return 'the hour is past 23';
  if (result?.minute !== undefined && result.minute > 59) return 'the minutes are past 59';
  return calendarProblem(result?.year ?? 2000, result?.month, result?.day) ?? 'a part is out of its range';
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
    if (problem) throw new DateFormatError(`impossible date (ISO 8601): ${problem}`);
    return { value, precision: d ? 'day' : m ? 'month' : 'year' };
  }
  const isoTime = ISO_TIME.exec(value);
  if (isoTime) {
    const [, y, mo, d, h, mi, s, frac, offset] = isoTime;
    const problem = calendarProblem(Number(y), Number(mo), Number(d));
    if (problem) throw new DateFormatError(`impossible date (ISO 8601): ${problem}`);
    if (Number(h) > 23 || Number(mi) > 59 || (s !== undefined && Number(s) > 59)) throw new DateFormatError('impossible date (ISO 8601): the time of day is past 23:59:59');
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
  let shapeProblem: string | undefined;
  for (const format of options.formats ?? []) {
    const simple = simpleFormat(format);
    if (simple) {
      const match = simple.pattern.exec(value);
      if (!match) {
        const shape = simple.loose?.exec(value);
        // Another declared format may still read it; the first shape problem is the answer when none does.
        if (shape) shapeProblem ??= `impossible date (${format}): ${partLengthProblem(format, simple.parts, shape)}`;
        continue;
      }
      const at: Partial<Record<'y' | 'M' | 'd', number>> = {};
      simple.parts.forEach((part, i) => (at[part] = Number(match[i + 1])));
      const problem = calendarProblem(at.y!, at.M, at.d);
      if (problem) throw new DateFormatError(`impossible date (${format}): ${problem}`);
      const pad = (n: number) => String(n).padStart(2, '0');
      if (at.d !== undefined && at.M !== undefined) return { value: `${at.y}-${pad(at.M)}-${pad(at.d)}`, precision: 'day' };
      if (at.M !== undefined) return { value: `${at.y}-${pad(at.M)}`, precision: 'month' };
      return { value: String(at.y), precision: 'year' };
    }
    const precision = precisionOf(format);
    const dt = DateTime.fromFormat(value, format, { zone: options.timezone ?? 'UTC', setZone: true });
    if (!dt.isValid) {
      // Luxon calls 30/02/2016 "unit out of range": the shape matched, the day does not exist.
      if (dt.invalidReason === 'unit out of range') throw new DateFormatError(`impossible date (${format}): ${luxonProblem(value, format)}`);
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
  if (shapeProblem) throw new DateFormatError(shapeProblem);
  const tried = ['ISO 8601', ...(options.formats ?? [])].join(', ');
  throw new DateFormatError(`not a date in any declared format (${tried})`);
}

/** A calendar unit date arithmetic can add, with the FHIRPath words and UCUM codes that name it. */
export type CalendarUnit = 'years' | 'months' | 'weeks' | 'days' | 'hours' | 'minutes' | 'seconds' | 'milliseconds';

const CALENDAR_UNITS: Record<string, CalendarUnit> = {
  year: 'years', years: 'years', a: 'years',
  month: 'months', months: 'months', mo: 'months',
  week: 'weeks', weeks: 'weeks', wk: 'weeks',
  day: 'days', days: 'days', d: 'days',
  hour: 'hours', hours: 'hours', h: 'hours',
  minute: 'minutes', minutes: 'minutes', min: 'minutes',
  second: 'seconds', seconds: 'seconds', s: 'seconds',
  millisecond: 'milliseconds', milliseconds: 'milliseconds', ms: 'milliseconds',
};

/**
 * The calendar unit a quantity unit names: FHIRPath's calendar words (`days`; @medplum/core hands them over as
 * `{days}`) and the UCUM codes of time (`'d'`, `'wk'`, `'mo'`, `'a'`), or undefined for any other unit.
 */
export function calendarUnit(unit: string | undefined): CalendarUnit | undefined {
  if (unit === undefined) return undefined;
  const bare = unit.replace(/^\{(.*)\}$/, '$1').replace(/^'(.*)'$/, '$1');
  return Object.hasOwn(CALENDAR_UNITS, bare) ? CALENDAR_UNITS[bare] : undefined;
}

const PRECISION_UNITS: Record<DatePrecision, readonly CalendarUnit[]> = {
  year: ['years'],
  month: ['years', 'months'],
  day: ['years', 'months', 'weeks', 'days'],
  time: Object.values(CALENDAR_UNITS),
};

/** What a date or date-time text is, and at which precision; undefined when it is neither. */
function datePrecision(text: string): DatePrecision | undefined {
  if (ISO_TIME.test(text) && /(Z|[+-]\d{2}:?\d{2})$/.test(text)) return 'time';
  const iso = ISO_PARTIAL.exec(text);
  if (!iso) return undefined;
  return iso[3] ? 'day' : iso[2] ? 'month' : 'year';
}

/**
 * `text` (a FHIR date or date-time) moved by `amount` calendar units, at the precision it had: a day stays a
 * day, a month a month (2016-01-31 + 1 month is 2016-02-29, the month's last day, as FHIRPath says), and a
 * date-time keeps its offset. Units finer than the date's precision are refused rather than truncated, so
 * `2016-05 + 10 days` is an error the mapping author sees, not a silent no-op.
 */
export function shiftDate(text: string, amount: number, unit: CalendarUnit): string {
  const precision = datePrecision(text);
  if (!precision) throw new DateFormatError('date arithmetic on a value that is not a FHIR date or date-time');
  if (!PRECISION_UNITS[precision].includes(unit)) {
    throw new DateFormatError(`cannot add ${unit} to a date of ${precision} precision (use a unit of ${PRECISION_UNITS[precision].join(', ')})`);
  }
  if (!Number.isInteger(amount) && unit !== 'seconds' && unit !== 'milliseconds') {
    throw new DateFormatError(`date arithmetic needs a whole number of ${unit}`);
  }
  if (precision === 'time') {
    const dt = DateTime.fromISO(text, { setZone: true }).plus({ [unit]: amount });
    if (!dt.isValid) throw new DateFormatError('date arithmetic gave no valid date-time');
    const fraction = /\.\d+/.test(text) || !Number.isInteger(amount);
    return dt.toISO({ suppressMilliseconds: !fraction }) ?? text;
  }
  const dt = DateTime.fromISO(text, { zone: 'UTC' }).plus({ [unit]: amount });
  if (!dt.isValid || dt.year < 1 || dt.year > 9999) throw new DateFormatError('date arithmetic left the years 0001 to 9999');
  return dt.toFormat(FHIR_FORMAT[precision]);
}

/** A date offset written in a mapping (`28 days`, `-1 month`, `+2 'wk'`), or a sentence saying what is wrong. */
export function parseDateOffset(text: string): { amount: number; unit: CalendarUnit } | string {
  const match = /^\s*([+-]?\d+(?:\.\d+)?)\s*('?[A-Za-z]+'?)\s*$/.exec(text);
  const unit = match ? calendarUnit(match[2]) : undefined;
  if (!match || !unit) return `expected an offset like '28 days' or '-1 month' (units: years, months, weeks, days, hours, minutes, seconds; UCUM a, mo, wk, d, h, min, s)`;
  return { amount: Number(match[1]), unit };
}
