'use strict';

// The trivial write: Put of one key on the ehrshare-kv chaincode (a fresh key per transaction,
// or one key for "hot": blind writes, which never conflict).

const { EhrWorkload } = require('./common');

class Put extends EhrWorkload {
    async submitTransaction() {
        const index = this.pick(this.roundArguments.patients.length);
        const patient = this.roundArguments.patients[index];
        const key = this.hot ? 'hot' : `k-${this.tag}-${this.sent}`;
        await this.send({
            contractId: this.roundArguments.kvContract,
            contractFunction: 'Put',
            contractArguments: [key, 'v'.repeat(64)],
            invokerIdentity: patient.alias,
            invokerMspId: patient.msp,
            readOnly: false,
        }, index);
    }
}

module.exports.createWorkloadModule = () => new Put();
