import { describe, expect, it } from 'vitest';
import { DateFormatError, parseSourceDate } from './dates.ts';

describe('parseSourceDate', () => {
  it('keeps ISO partial dates at their precision', () => {
    expect(parseSourceDate('2016')).toEqual({ value: '2016', precision: 'year' });
    expect(parseSourceDate('2016-03')).toEqual({ value: '2016-03', precision: 'month' });
    expect(parseSourceDate('2016-03-04')).toEqual({ value: '2016-03-04', precision: 'day' });
  });

  it('rejects days that do not exist, in ISO and declared formats', () => {
    expect(() => parseSourceDate('2016-02-30')).toThrow(/impossible date: day 30 of 2016-02/);
    expect(() => parseSourceDate('2016-13')).toThrow(/month 13/);
    expect(() => parseSourceDate('30/02/2016', { formats: ['dd/MM/yyyy'] })).toThrow(/impossible date \(dd\/MM\/yyyy\)/);
    expect(parseSourceDate('2016-02-29').value).toBe('2016-02-29');
  });

  it('reads day-first dates and month-only formats at their precision', () => {
    expect(parseSourceDate('04/03/2016', { formats: ['dd/MM/yyyy'] }).value).toBe('2016-03-04');
    expect(parseSourceDate('03/2016', { formats: ['dd/MM/yyyy', 'MM/yyyy'] })).toEqual({ value: '2016-03', precision: 'month' });
  });

  it('places date-times without offset in the declared timezone and refuses to guess without one', () => {
    expect(parseSourceDate('2016-03-04T10:30', { timezone: 'Asia/Seoul' }).value).toBe('2016-03-04T10:30:00+09:00');
    expect(parseSourceDate('2016-03-04T10:30:00Z').value).toBe('2016-03-04T10:30:00Z');
    expect(() => parseSourceDate('2016-03-04T10:30')).toThrow(DateFormatError);
    expect(parseSourceDate('04/03/2016 10:30', { formats: ['dd/MM/yyyy HH:mm'], timezone: 'Europe/Paris' }).value).toBe('2016-03-04T10:30:00+01:00');
  });

  it('names the formats it tried when nothing matches', () => {
    expect(() => parseSourceDate('March 4th', { formats: ['dd/MM/yyyy'] })).toThrow(/not a date in any declared format \(ISO 8601, dd\/MM\/yyyy\)/);
  });
});
