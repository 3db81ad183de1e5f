export * from './rotate-kek';
export * from './destroy-kek';
export * from './scheduled-rotation';
export * from './messages';
export * from './search-attributes';
export * from './migrate-dek';
export * from './schedule-notices';
export * from './schedule-check';
