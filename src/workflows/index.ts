export * from './rotate-kek';
export * from './messages';
export * from './search-attributes';
