import { describe, expect, it } from 'vitest';
import { cachedUnits, conversionFactor, convert, MAX_CACHED_UNITS, MAX_UNIT_LENGTH, ucumCode } from './units.ts';

describe('UCUM units', () => {
  it('converts Gy to the cGy the radiotherapy profile fixes, without float noise', () => {
    expect(convert(60, conversionFactor('Gy', 'cGy'))).toBe(6000);
    expect(convert(59.4, conversionFactor('Gy', 'cGy'))).toBe(5940);
    expect(convert(4500, conversionFactor('cGy', 'Gy'))).toBe(45);
    expect(convert(500, conversionFactor('mg', 'g'))).toBe(0.5);
  });

  it('refuses units that are not UCUM or not commensurable', () => {
    expect(() => ucumCode('grays please')).toThrow(/^not a UCUM unit$/);
    expect(() => conversionFactor('mg', 'cGy')).toThrow(/^cannot be converted to cGy$/);
  });

  it('refuses an overlong unit before parsing it, and remembers a bounded number of units and pairs', () => {
    expect(() => ucumCode('kg.'.repeat(20_000) + 'm')).toThrow(new RegExp(`^unit is 60001 characters long, over the limit of ${MAX_UNIT_LENGTH}$`));
    for (let i = 0; i < MAX_CACHED_UNITS + 20; i++) {
      ucumCode(`mg/{dose${i}}`);
      expect(() => conversionFactor(`mg/{dose${i}}`, 'cGy')).toThrow(/cannot be converted/);
    }
    expect(cachedUnits()).toEqual({ units: MAX_CACHED_UNITS, pairs: MAX_CACHED_UNITS });
    expect(ucumCode(' Gy ')).toBe('Gy');
  });
});
