export * from './rotate-kek';
export * from './messages';
