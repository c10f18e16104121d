/**
 * A one-line progress bar for terminals that degrades to plain lines when stdout is not a TTY.
 *
 * @module
 */

const enc = new TextEncoder();

/** Formats seconds as h:mm:ss or m:ss. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "--:--";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return `${h ? h + ":" : ""}${mm}:${String(sec).padStart(2, "0")}`;
}

/** Progress over a known number of steps. */
export class Progress {
  #total: number;
  #start = performance.now();
  #startStep: number;
  #tty: boolean;
  #lastPlain = 0;
  #plainEvery: number;
  #drawn = false;

  /**
   * @param total the last step
   * @param startStep the step it starts at (resumed runs)
   * @param plainEvery without a terminal, print a line every this many steps
   */
  constructor(total: number, startStep = 0, plainEvery = 10) {
    this.#total = total;
    this.#startStep = startStep;
    this.#tty = Deno.stdout.isTerminal();
    this.#plainEvery = plainEvery;
  }

  /** Redraws the bar (or prints a line) for `step` with a status text. */
  update(step: number, status: string): void {
    const done = step - this.#startStep;
    const elapsed = (performance.now() - this.#start) / 1000;
    const eta = done > 0 ? (elapsed / done) * (this.#total - step) : NaN;
    const frac = Math.min(1, step / this.#total);
    const head = `step ${step}/${this.#total}`;
    const tail = `${formatDuration(elapsed)}<${formatDuration(eta)} ${status}`;
    if (this.#tty) {
      const cols = Deno.consoleSize?.().columns ?? 100;
      const width = Math.max(10, Math.min(30, cols - head.length - tail.length - 6));
      const fill = Math.round(frac * width);
      const bar = `${"█".repeat(fill)}${"░".repeat(width - fill)}`;
      const line = `${head} ${bar} ${tail}`.slice(0, cols - 1);
      Deno.stdout.writeSync(enc.encode(`\r\x1b[2K${line}`));
      this.#drawn = true;
    } else if (step - this.#lastPlain >= this.#plainEvery || step === this.#total) {
      this.#lastPlain = step;
      console.log(`${head} (${(frac * 100).toFixed(1)}%) ${tail}`);
    }
  }

  /** Prints a message above the bar. */
  log(message: string): void {
    if (this.#tty && this.#drawn) Deno.stdout.writeSync(enc.encode("\r\x1b[2K"));
    console.log(message);
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.#tty && this.#drawn) Deno.stdout.writeSync(enc.encode("\n"));
    this.#drawn = false;
  }
}
