import { describe, expect, it } from 'vitest';
import { conversionFactor, convert, ucumCode } from './units.ts';

describe('UCUM units', () => {
  it('converts Gy to the cGy the radiotherapy profile fixes, without float noise', () => {
    expect(convert(60, conversionFactor('Gy', 'cGy'))).toBe(6000);
    expect(convert(59.4, conversionFactor('Gy', 'cGy'))).toBe(5940);
    expect(convert(4500, conversionFactor('cGy', 'Gy'))).toBe(45);
    expect(convert(500, conversionFactor('mg', 'g'))).toBe(0.5);
  });

  it('refuses units that are not UCUM or not commensurable', () => {
    expect(() => ucumCode('grays please')).toThrow(/not a UCUM unit/);
    expect(() => conversionFactor('mg', 'cGy')).toThrow(/cannot convert mg to cGy/);
  });
});
