/**
 * Exit codes of `kiln run` (documented in README and `kiln run --help`). A job's own exit code passes
 * through unchanged (0-255); kiln's own outcomes use these, chosen after timeout(1)'s 124 convention.
 */
export const EXIT = {
  /** The VM failed to boot, or stopped without reporting the job's exit status. */
  vmFailed: 123,
  /** The job ran past --timeout; the VM was killed. */
  timedOut: 124,
  /** kiln could not start the job: bad input, a missing prerequisite, a damaged image. */
  kilnError: 125,
  /** The command was not found in the guest (the guest's shell convention). */
  notFound: 127,
  /** kiln was interrupted (128 + signal number). */
  sigint: 130,
  sigterm: 143,
} as const;
