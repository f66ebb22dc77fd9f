import { ClientError, Status } from 'nice-grpc';

/** A call's outcome as its status name and details: `{ code: 'OK', details: '' }` when it succeeded. */
export async function status(p: Promise<unknown>): Promise<{ code: string; details: string }> {
  try {
    await p;
    return { code: 'OK', details: '' };
  } catch (err) {
    if (err instanceof ClientError) return { code: Status[err.code], details: err.details };
    throw err;
  }
}
