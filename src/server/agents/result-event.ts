/** How a VM's result changes its job. Pure. */
import type { JobResultMsg } from '../../core/agent-protocol.ts';
import type { Job } from '../../core/job.ts';
import type { JobEvent } from '../../core/job-state.ts';
import type { TransitionFields } from '../../store/jobs.ts';

/**
 * The event of a result whose outcome does not depend on the stored job (a VM that exited: its exit code
 * decides), or undefined when it does (cancellation, timeouts).
 */
export function exitEvent(r: JobResultMsg): { event: Extract<JobEvent, { type: 'exit' }>; fields: { exitCode: number } } | undefined {
  if (r.outcome !== 'exited') return undefined;
  const exitCode = r.exitCode ?? 255;
  return { event: { type: 'exit', exitCode }, fields: { exitCode } };
}

/** Maps a VM result to the job event it causes. */
export function resultEvent(r: JobResultMsg, job: Pick<Job, 'cancelRequested' | 'timeoutMs' | 'state'>): { event: JobEvent; fields?: TransitionFields } {
  switch (r.outcome) {
    case 'exited':
      return exitEvent(r)!;
    case 'timed_out':
      return { event: { type: 'time_out' }, fields: { error: { code: 'job.timed_out', message: `the job ran longer than its timeout of ${job.timeoutMs} ms` } } };
    case 'killed':
      if (job.cancelRequested) return { event: { type: 'cancel' }, fields: { detail: r.message ?? 'cancelled' } };
      return { event: { type: 'fail', code: 'vm.killed' }, fields: { error: { code: r.code ?? 'vm.killed', message: r.message ?? 'the VM was stopped' } } };
    case 'boot_failed':
    case 'crashed':
    case 'launch_failed':
      if (job.cancelRequested) return { event: { type: 'cancel' } };
      return {
        event: { type: 'fail', code: r.code ?? `vm.${r.outcome}` },
        fields: { error: { code: r.code ?? `vm.${r.outcome}`, message: r.message ?? `the VM ${r.outcome.replace('_', ' ')}` } },
      };
  }
}

