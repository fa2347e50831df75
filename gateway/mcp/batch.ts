import { messagesOf } from './tools.js';

/** The most messages one batch may carry; a bigger one is refused whole. */
export const MAX_BATCH = 50;

/** One message sent on its own: its HTTP status, content type and body. */
export type SendOne = (message: string) => Promise<{ status: number; contentType: string | undefined; text: string }>;

/**
 * A JSON-RPC batch (MCP 2025-03-26) decided per element: each message goes through the whole
 * request path on its own — its own decision, approval, rate limits and audit row — and the
 * answers are gathered into one array, as JSON-RPC 2.0 §6 wants. Notifications and responses get
 * no answer; a batch of only those gets none at all (undefined: 202).
 */
export async function answerBatch(messages: readonly unknown[], send: SendOne): Promise<unknown[] | undefined> {
  const answers = await Promise.all(
    messages.map(async (m) => {
      const r = await send(JSON.stringify(m));
      if (r.status === 202 || r.text === '') return [];
      return messagesOf(r.text, r.contentType);
    }),
  );
  const all = answers.flat();
  return all.length === 0 ? undefined : all;
}
