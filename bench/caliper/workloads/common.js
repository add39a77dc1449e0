'use strict';

// Shared by the ehrshare workload modules: which patient (or clinician) a transaction goes to.
// "many": each worker cycles over its own share of the identities, so no two workers write to
// one patient's log; "hot": every transaction to the first patient.

const { WorkloadModuleBase } = require('@hyperledger/caliper-core');

class EhrWorkload extends WorkloadModuleBase {
    async initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext) {
        await super.initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext);
        this.sent = 0;
        this.tag = `${roundArguments.tag || 'c'}-${roundIndex}-${workerIndex}`;
        this.hot = Boolean(roundArguments.hot);
        this.busy = new Set();
        this.cursor = 0;
    }

    /** The index in a list of n identities of this worker's next transaction: the next of
     * its own share with no transaction of this worker in flight (so "many" never puts two
     * transactions on one patient's log at once while the load is at most the share). */
    pick(n) {
        if (this.hot) {
            return 0;
        }
        const mine = [];
        for (let i = this.workerIndex; i < n; i += this.totalWorkers) {
            mine.push(i);
        }
        const list = mine.length ? mine : [this.workerIndex % n];
        for (let k = 0; k < list.length; k++) {
            const candidate = list[(this.cursor + k) % list.length];
            if (!this.busy.has(candidate)) {
                this.cursor = (this.cursor + k + 1) % list.length;
                return candidate;
            }
        }
        this.cursor = (this.cursor + 1) % list.length;
        return list[this.cursor];
    }

    async send(request, index) {
        this.sent += 1;
        this.busy.add(index);
        try {
            await this.sutAdapter.sendRequests(request);
        } finally {
            this.busy.delete(index);
        }
    }
}

module.exports = { EhrWorkload };
