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
    }

    /** The index in a list of n identities of this worker's next transaction. */
    pick(n) {
        if (this.hot) {
            return 0;
        }
        const mine = [];
        for (let i = this.workerIndex; i < n; i += this.totalWorkers) {
            mine.push(i);
        }
        const list = mine.length ? mine : [this.workerIndex % n];
        return list[this.sent % list.length];
    }

    async send(request) {
        this.sent += 1;
        await this.sutAdapter.sendRequests(request);
    }
}

module.exports = { EhrWorkload };
