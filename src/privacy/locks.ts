export const subjectLockKey = (subjectId: string): string => `lethe:subject:${subjectId}`;
