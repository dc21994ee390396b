// The package ships no types; trialbridge uses two calls of its UcumLhcUtils (typed in mapping/units.ts).
declare module '@lhncbc/ucum-lhc' {
  const ucum: unknown;
  export default ucum;
}
