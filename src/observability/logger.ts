import type { LogLevel, LogMetadata, Logger } from '@temporalio/worker';
import pino from 'pino';

/** Structured JSON logs. Nothing here ever receives key bytes: KEKs are named by id and fingerprint only. */
export function createLogger(level: string = process.env.LOG_LEVEL ?? 'info'): pino.Logger {
  return pino({ level, base: { service: 'rekey' }, redact: ['*.key', '*.kek', '*.dek', '*.secret', '*.token'] });
}

/** Temporal's Runtime logs (worker, activities, workflows) through the same JSON logger. */
export function temporalLogger(logger: pino.Logger): Logger {
  const at =
    (level: 'trace' | 'debug' | 'info' | 'warn' | 'error') =>
    (message: string, meta?: LogMetadata): void =>
      logger[level](meta ?? {}, message);
  return {
    log: (level: LogLevel, message: string, meta?: LogMetadata) =>
      logger[level.toLowerCase() as 'info'](meta ?? {}, message),
    trace: at('trace'),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
  };
}
