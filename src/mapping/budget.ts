/**
 * The evaluation budget of one mapping expression on one record. A mapping file may come from a less trusted
 * author: FHIRPath cannot loop, but nested `where`/`select` over a subject's records grow as records^depth and
 * `&` or `join()` can build strings without bound, so every step of the evaluators ticks here and an
 * evaluation that goes past the limits is stopped (the record is rejected naming the expression).
 *
 * Evaluation is synchronous, so one budget per process is enough: the outermost evaluation opens it.
 */

export interface EvaluationLimits {
  /** Steps (an expression node applied to a collection, one item of a `where`) per evaluation. */
  readonly maxSteps: number;
  /** Wall-clock time per evaluation, ms. */
  readonly maxMillis: number;
  /** Longest string an expression may produce. */
  readonly maxStringLength: number;
  /** Largest collection an expression may produce. */
  readonly maxCollection: number;
  /** Longest input a regular expression (`matches`, `replaceMatches`) is run on. */
  readonly maxRegexInput: number;
}

export const DEFAULT_EVALUATION_LIMITS: EvaluationLimits = {
  maxSteps: 200_000,
  maxMillis: 1000,
  maxStringLength: 1024 * 1024,
  maxCollection: 100_000,
  maxRegexInput: 500,
};

let limits: EvaluationLimits = DEFAULT_EVALUATION_LIMITS;

/** Changes the limits (tests, or an operator's configuration); returns the previous ones. */
export function setEvaluationLimits(next: Partial<EvaluationLimits>): EvaluationLimits {
  const previous = limits;
  limits = { ...limits, ...next };
  return previous;
}

export function evaluationLimits(): EvaluationLimits {
  return limits;
}

/** Thrown inside an evaluation that ran out of budget; the caller turns it into a record reject. */
export class BudgetExceeded extends Error {}

const TIME_CHECK_EVERY = 256;

let depth = 0;
let steps = 0;
let nextTimeCheck = TIME_CHECK_EVERY;
let deadline = 0;
/** Sticky: code between a tick and the caller (the engine wraps errors) must not make an overrun pass. */
let exceeded: string | undefined;

function exceed(reason: string): never {
  exceeded ??= reason;
  throw new BudgetExceeded(exceeded);
}

/**
 * Runs one evaluation under the budget. Returns its result, or throws `onExceeded(reason)` when the budget
 * ran out, whatever the evaluator made of the BudgetExceeded on its way out.
 */
export function withinBudget<T>(run: () => T, onExceeded: (reason: string) => Error): T {
  if (depth === 0) {
    steps = 0;
    nextTimeCheck = TIME_CHECK_EVERY;
    deadline = performance.now() + limits.maxMillis;
    exceeded = undefined;
  }
  depth++;
  try {
    const result = run();
    if (exceeded !== undefined) throw onExceeded(exceeded);
    return result;
  } catch (err) {
    if (exceeded !== undefined) throw onExceeded(exceeded);
    throw err;
  } finally {
    depth--;
  }
}

/** Counts `n` steps; throws once past the step or time limit. Outside an evaluation it does nothing. */
export function tick(n = 1): void {
  if (depth === 0) return;
  if (exceeded !== undefined) throw new BudgetExceeded(exceeded);
  steps += n;
  if (steps > limits.maxSteps) exceed(`more than ${limits.maxSteps} evaluation steps`);
  if (steps >= nextTimeCheck) {
    nextTimeCheck = steps + TIME_CHECK_EVERY;
    if (performance.now() > deadline) exceed(`took longer than ${limits.maxMillis} ms`);
  }
}

/** Checks what a step produced: no string or collection past the limits. */
export function checkResult(values: readonly unknown[], valueOf: (v: unknown) => unknown = (v) => v): void {
  if (depth === 0) return;
  if (values.length > limits.maxCollection) exceed(`a collection of ${values.length} items (limit ${limits.maxCollection})`);
  for (const v of values) {
    const value = valueOf(v);
    if (typeof value === 'string' && value.length > limits.maxStringLength) exceed(`a string of ${value.length} characters (limit ${limits.maxStringLength})`);
  }
}

/** Checks the input of a regular expression against its length limit. */
export function checkRegexInput(text: string): void {
  if (depth === 0) return;
  if (text.length > limits.maxRegexInput) exceed(`a regular expression on a value of ${text.length} characters (limit ${limits.maxRegexInput})`);
}
