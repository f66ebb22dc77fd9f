import { InvalidArgumentError } from '../errors.js';
import type { PrivacyEngine, PrivacyRequestView } from '../privacy/engine.js';
import type { Principal } from '../privacy/principal.js';
import type { RequestState } from '../store/ledger.js';
import type { PageTokens } from './page-token.js';

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 500;

export interface PageQuery {
  readonly subjectId?: string | undefined;
  readonly state?: RequestState | undefined;
  readonly overdueOnly: boolean;
  readonly dueBefore?: Date | undefined;
  /** 0: the default. */
  readonly pageSize: number;
  /** '' for the first page. */
  readonly pageToken: string;
}

/** One page of the ledger and the token of the next, for every front (gRPC and HTTP) alike. */
export async function listRequestsPage(
  engine: PrivacyEngine,
  actor: Principal,
  q: PageQuery,
  pageTokens: PageTokens,
): Promise<{ requests: PrivacyRequestView[]; nextPageToken: string }> {
  const pageSize = q.pageSize === 0 ? DEFAULT_PAGE_SIZE : q.pageSize;
  if (!Number.isInteger(pageSize) || pageSize < 0 || pageSize > MAX_PAGE_SIZE) throw new InvalidArgumentError(`page_size must be at most ${MAX_PAGE_SIZE}`);
  const rows = await engine.listRequests(actor, {
    subjectId: q.subjectId,
    state: q.state,
    overdueOnly: q.overdueOnly,
    dueBefore: q.dueBefore,
    pageSize: pageSize + 1,
    after: q.pageToken === '' ? undefined : pageTokens.decode(q.pageToken),
  });
  const page = rows.slice(0, pageSize);
  const last = page.at(-1);
  return { requests: page, nextPageToken: rows.length > pageSize && last !== undefined ? pageTokens.encode(last) : '' };
}
