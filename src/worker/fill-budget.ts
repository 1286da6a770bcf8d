// How much of a worker's time the background fill may take while faults wait. Serving a fault
// earns the fill credit in proportion (share / (1 - share) of the fault's service time); a fill
// copy may run past a waiting fault only while it has credit, so a fault waits at most about
// `maxCreditNs` behind the fill, and the fill still gets its share under a steady stream of faults.
// A plain object with the clock injected, so the policy is testable without a kernel.
export class FillBudget {
  private credit = 0;
  private readonly perFaultNs: number;

  constructor(
    share: number,
    private readonly maxCreditNs: number,
    private readonly now: () => number,
  ) {
    if (!(share > 0 && share < 1)) throw new RangeError(`fill share must lie strictly between 0 and 1, got ${share}`);
    this.perFaultNs = share / (1 - share);
  }

  /** A fault was served in `ns`. */
  earn(ns: number): void {
    this.credit = Math.min(this.credit + ns * this.perFaultNs, this.maxCreditNs);
  }

  /** The moment a fill copy starting now must give way to a waiting fault. */
  yieldAt(): number {
    return this.now() + this.credit;
  }

  /** A fill copy ran from `startNs` until now. */
  spend(startNs: number): void {
    this.credit = Math.max(0, this.credit - (this.now() - startNs));
  }

  get creditNs(): number {
    return this.credit;
  }
}

/**
 * Whether a worker may help fill processes other workers own. Helping pays only with a CPU to
 * spare: the restored threads, the fault-serving owner and the main thread may already want every
 * CPU, and a helper that takes one makes faults wait behind fill. A helper preempted while it
 * helped (involuntary context switches, getrusage) stays off for a while, doubling up to a cap, and
 * is back at once when a lease goes by without preemption.
 */
export class HelpThrottle {
  private backoffNs = 0;
  private untilNs = 0;

  constructor(
    private readonly minNs: number,
    private readonly maxNs: number,
    private readonly now: () => number,
  ) {}

  mayHelp(): boolean {
    return this.now() >= this.untilNs;
  }

  /** ns until helping is allowed again (0 if it is). */
  get waitNs(): number {
    return Math.max(0, this.untilNs - this.now());
  }

  /** A lease of another worker's was copied; `preempted`: this thread lost its CPU meanwhile. */
  helped(preempted: boolean): void {
    if (!preempted) {
      this.backoffNs = 0;
      return;
    }
    this.backoffNs = Math.min(Math.max(this.backoffNs * 2, this.minNs), this.maxNs);
    this.untilNs = this.now() + this.backoffNs;
  }
}
