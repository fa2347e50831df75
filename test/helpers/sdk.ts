import type { FakeUpstream, RecordedRequest } from './upstream.js';

/** What SDK tests count: the requests a client sent to Valet (retries show up here) and those the upstream received. */
export interface SdkTraffic {
  /** A `fetch` for the SDK that records each request's path before sending it. */
  readonly fetch: typeof fetch;
  /** How many requests the SDK sent to this path on Valet. */
  sentTo(path: string): number;
  /** The requests the upstream received for this path (query ignored). */
  received(path: string): RecordedRequest[];
}

export function sdkTraffic(upstream: () => FakeUpstream): SdkTraffic {
  const sent: string[] = [];
  return {
    fetch: async (input, init) => {
      sent.push(new URL(input instanceof Request ? input.url : String(input)).pathname);
      return fetch(input, init);
    },
    sentTo: (path) => sent.filter((p) => p === path).length,
    received: (path) => upstream().requests.filter((r) => new URL(r.url, 'http://x').pathname === path),
  };
}
