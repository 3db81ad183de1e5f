export * from './rotate-kek';
