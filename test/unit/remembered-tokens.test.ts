import { UnsecuredJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { rememberVerified } from '../../src/auth/remembered-tokens.js';
import { UnauthenticatedError } from '../../src/errors.js';

const token = (sub: string, expSeconds: number) => `Bearer ${new UnsecuredJWT({ sub }).setExpirationTime(expSeconds).encode()}`;

describe('rememberVerified', () => {
  const setup = () => {
    let clock = 1_000_000_000_000;
    const checked: string[] = [];
    const refused = new Set<string>();
    const verify = rememberVerified(
      async (authorization) => {
        checked.push(authorization ?? '');
        if (refused.has(authorization ?? '')) throw new UnauthenticatedError('refused');
        return { id: 'someone', role: 'user' };
      },
      () => clock,
    );
    return { verify, checked, refused, advance: (ms: number) => (clock += ms), seconds: () => Math.floor(clock / 1000) };
  };

  it('checks a token once, then takes it on trust until a minute has passed', async () => {
    const { verify, checked, advance, seconds } = setup();
    const t = token('a', seconds() + 3600);
    await verify(t);
    advance(59_000);
    await verify(t);
    expect(checked).toHaveLength(1);
    advance(2_000);
    await verify(t);
    expect(checked).toHaveLength(2);
  });

  it('checks a token again once it has expired, and never remembers a refusal', async () => {
    const { verify, checked, refused, advance, seconds } = setup();
    const t = token('a', seconds() + 10);
    await verify(t);
    advance(11_000);
    refused.add(t);
    await expect(verify(t)).rejects.toBeInstanceOf(UnauthenticatedError);
    await expect(verify(t)).rejects.toBeInstanceOf(UnauthenticatedError);
    expect(checked).toHaveLength(3);
  });

  it('remembers only the exact token', async () => {
    const { verify, checked, seconds } = setup();
    await verify(token('a', seconds() + 3600));
    await verify(token('b', seconds() + 3600));
    await verify(undefined);
    await verify(undefined);
    expect(checked).toHaveLength(4);
  });
});
