// Types of presence.js (written by hand: the module is plain JavaScript, with no build step).

/** A presence change, as the view's hooks and changes() receive it. From the feed it is the
 * change as the service published it, with the cursor that resumes after it (null when the
 * feed is read as JSON pages: a page's cursor comes after all its changes); with `resync`,
 * the view found it by reading the snapshot again after a reset (the identity's state
 * differs from what the view held), and reason, event_id, changed_at and cursor are null. */
export interface Change {
  service_sid: string;
  identity: string;
  online: boolean;
  /** Of the change; for a resync, the version listed (0 for an identity no longer listed). */
  version: number;
  reason: 'connected' | 'disconnected' | 'expired' | null;
  event_id: number | null;
  changed_at: string | null;
  cursor: string | null;
  resync: boolean;
}

/** An identity as POST /lookup answers. */
export interface Identity {
  service_sid: string;
  identity: string;
  online: boolean;
  /** Inside its grace period: still published online. Not on the feed. */
  pending_offline: boolean;
  endpoints: string[];
  last_event_id: number | null;
  changed_at: string | null;
  version: number;
}

/** Why the feed could not resume: its cursor is older than the feed keeps, Redis lost what
 * it saw, or the service does not take it. */
export type ResetReason = 'retention' | 'lost' | 'invalid_cursor';

export type Transport = 'stream' | 'poll';

export interface Status {
  /** loading: reading the snapshot; live: following the feed; lost: trying again; closed. */
  state: 'loading' | 'live' | 'lost' | 'closed';
  transport: Transport;
  /** While loading: identities listed so far. */
  listed?: number;
  error?: Error;
}

export type Token = string | null | (() => string | null | Promise<string | null>);

export interface PresenceViewOptions {
  /** The service's base URL; '' (the default) for requests relative to the page. */
  url?: string;
  serviceSid: string;
  /** PRESENCE_API_TOKEN, or a function asked before every request. */
  token?: Token;
  /** Follow only these identities (1 to 1000). */
  identities?: Iterable<string> | null;
  /** 'auto' (the default): streams, and long-polls after two streams in a row brought nothing. */
  transport?: 'auto' | Transport;
  onChange?: ((change: Change) => void | Promise<void>) | null;
  onReset?: ((reason: ResetReason) => void | Promise<void>) | null;
  onStatus?: ((status: Status) => void) | null;
  /** Called with the token a 401 refused; the request is made again once it resolves.
   * Without it, a 401 stops the view. */
  onUnauthorized?: ((refused: string | null) => Promise<void>) | null;
  fetch?: typeof fetch | null;
  /** A stream silent this long is lost (30000: the service writes every 10 s). */
  silenceMs?: number;
}

export class PresenceError extends Error {
  readonly status: number;
  readonly code: string;
}

/** The service refused (a wrong token, ServiceSid or filter): asking again cannot help. */
export class PresenceRefused extends PresenceError {}

/** The service could not be reached, or cannot serve now: the view tries again. */
export class PresenceUnavailable extends PresenceError {
  readonly retryAfterMs: number | null;
  readonly stalled: boolean;
}

export class PresenceView {
  constructor(options: PresenceViewOptions);
  readonly serviceSid: string;
  /** Where the feed resumes (null while a snapshot is read). */
  readonly cursor: string | null;
  readonly transport: Transport;
  /** Why the view stopped following, when the service refused it. */
  readonly error: PresenceError | null;
  /** Reads the snapshot, then follows the feed; rejects when the service refuses. */
  start(): Promise<void>;
  close(): void;
  /** Published presence: pending offline counts as online. */
  isOnline(identity: string): boolean;
  online(): Set<string>;
  version(identity: string): number;
  /** Every change from now on; ends when the view closes. */
  changes(): AsyncIterableIterator<Change>;
  lookup(identities: Iterable<string>): Promise<Identity[]>;
}

export interface ServerSentEvent {
  event: string;
  /** null for an event with an id alone (it moves the cursor). */
  data: string | null;
  id: string | null;
}

/** The Server-Sent Events wire format, parsed as it arrives. */
export class EventParser {
  feed(text: string): ServerSentEvent[];
}

/** What a view holds: versions, and who is online. */
export class Held {
  versions: Map<string, number>;
  online: Set<string>;
  take(identity: string, version: number, online: boolean): boolean;
  replace(
    versions: Map<string, number>,
    online: Iterable<string>,
  ): Array<[identity: string, online: boolean, version: number]>;
}
