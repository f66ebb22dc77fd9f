/** Who is calling, as established by a verified token. */
export interface Principal {
  /** The token's `sub`: a user id, or a service principal's name. */
  readonly id: string;
  /**
   * `platform` for principals the configuration trusts with platform-owner rights (the
   * operator, other services); `user` for everyone else, whose rights come from the database.
   */
  readonly role: 'platform' | 'user';
}
