/**
 * The GitHub part's events live on the server's one typed bus (server/events.ts: delivery.processed,
 * job.refused, runner.state, runner.failed, api.throttled, pass.done); these names are kept for the GitHub code.
 */
export { ServerEventBus as GitHubEventBus, type ServerEvents as GitHubEvents } from '../events.ts';
