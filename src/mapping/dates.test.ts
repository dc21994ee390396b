import { describe, expect, it } from 'vitest';
import { DateFormatError, parseSourceDate } from './dates.ts';

describe('parseSourceDate', () => {
  it('keeps ISO partial dates at their precision', () => {
    expect(parseSourceDate('2016')).toEqual({ value: '2016', precision: 'year' });
    expect(parseSourceDate('2016-03')).toEqual({ value: '2016-03', precision: 'month' });
    expect(parseSourceDate('2016-03-04')).toEqual({ value: '2016-03-04', precision: 'day' });
  });

  it('rejects days that do not exist, in ISO and declared formats', () => {
    expect(() => parseSourceDate('2016-02-30')).toThrow('impossible date (ISO 8601): the day is past the end of the month (February has 28 or 29 days)');
    expect(() => parseSourceDate('2016-13')).toThrow('impossible date (ISO 8601): the month is past 12 (months run 01 to 12)');
    expect(() => parseSourceDate('30/02/2016', { formats: ['dd/MM/yyyy'] })).toThrow('impossible date (dd/MM/yyyy): the day is past the end of the month (February has 28 or 29 days)');
    expect(parseSourceDate('2016-02-29').value).toBe('2016-02-29');
  });

  it('says why a date is impossible in every format, naming the part and the format, never the value', () => {
    const dotted = { formats: ['dd.MM.yyyy'] };
    const reason = (text: string, options = dotted) => {
      try {
        parseSourceDate(text, options);
      } catch (err) {
        expect(err).toBeInstanceOf(DateFormatError);
        return (err as Error).message;
      }
      throw new Error(`${text} parsed`);
    };
    expect(reason('31.02.2020')).toBe('impossible date (dd.MM.yyyy): the day is past the end of the month (February has 28 or 29 days)');
    expect(reason('29.02.2019')).toBe('impossible date (dd.MM.yyyy): February 29 in a year that is not a leap year');
    expect(reason('31.04.2019')).toBe('impossible date (dd.MM.yyyy): the day is past the end of the month (April has 30 days)');
    expect(reason('12.13.2020')).toBe('impossible date (dd.MM.yyyy): the month is past 12 (months run 01 to 12)');
    expect(reason('12.00.2020')).toBe('impossible date (dd.MM.yyyy): month 0 does not exist (months run 01 to 12)');
    expect(reason('00.12.2020')).toBe('impossible date (dd.MM.yyyy): day 0 does not exist (days start at 01)');
    expect(reason('..2020')).toBe('impossible date (dd.MM.yyyy): the day part is empty');
    expect(reason('12..2020')).toBe('impossible date (dd.MM.yyyy): the month part is empty');
    expect(reason('1.12.2020')).toBe('impossible date (dd.MM.yyyy): the day part has 1 digits where dd wants 2');
    expect(reason('2019-02-29T10:00:00Z')).toBe('impossible date (ISO 8601): February 29 in a year that is not a leap year');
    expect(reason('2019-02-28T25:00:00Z')).toBe('impossible date (ISO 8601): the time of day is past 23:59:59');
    // Formats Luxon reads (month names): the reason comes from the parts it read, not from its own message.
    expect(reason('30 Feb 2016', { formats: ['dd MMM yyyy'] })).toBe('impossible date (dd MMM yyyy): the day is past the end of the month (February has 28 or 29 days)');
    for (const text of ['31.02.2020', '12.13.2020', '1.12.2020']) expect(reason(text)).not.toContain(text.split('.')[0] + '.');
  });

  it('tries the next declared format before blaming the shape of the first', () => {
    expect(parseSourceDate('4.3.2016', { formats: ['dd.MM.yyyy', 'd.M.yyyy'] }).value).toBe('2016-03-04');
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
