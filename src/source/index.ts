export type { PageSource, PageData, ProcessPages, AddressRange } from './page-source';
export { openLocalProcess } from './local';
