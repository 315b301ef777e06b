/** kiln's version: the CLI's `--version`, the OpenAPI description and what agents report (package.json's `version`). */
export const KILN_VERSION = '0.1.0';
